"""The device mesh, and the shardings of parameters, optimizer state, recipe state and batches on it.

Mesh axes: `data` (batch only), `fsdp` (batch and parameter shards: ZeRO-3 style, gathered per layer by XLA),
`tensor` (attention heads, MLP hidden units, vocabulary), `expert` (expert parallelism: the experts of each
mixture-of-experts layer split over it, the batch too, so outside those layers it acts as data parallelism; size
1 unless `mesh.expert` is set). Multi-slice jobs put `dcn_data` slices along the data axis
(`create_hybrid_device_mesh`), so only gradient all-reduces cross the data-centre network.

Every parameter carries its logical axes from where it was created (`jdistill.nn.params`); the one rule table
(`jdistill.partitioning.DEFAULT_RULES`, with the config's `mesh.rules` applied by `resolve_rules`) maps them to
mesh axes. Optax moments, EMA teachers and snapshot stacks are Variables made from the parameters, so they carry
the same names and are sharded like them. A parameter without logical axes is an error, never silently
replicated. The same rules reach the layers' activation constraints and the per-shard kernels through
`jdistill.partitioning.axis_rules`, which the train step enters while it traces.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdistill.errors import UserError
from jdistill.partitioning import DEFAULT_RULES, MESH_AXES, logical_axes, mesh_axes_of, spec_for


class MeshError(UserError):
    """The mesh in the config does not fit the devices."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int, int]:
    """(data, fsdp, tensor, expert) sizes, with `data: -1` taking the devices the other axes leave. A mesh smaller
    than the devices is allowed on one process (it uses the first devices: `mesh.data=1` runs on one device)."""
    fixed = mesh_config.fsdp * mesh_config.tensor * mesh_config.expert
    data = mesh_config.data
    if data == -1:
        if num_devices % fixed:
            raise MeshError(f"mesh: fsdp*tensor*expert = {fixed} does not divide the {num_devices} devices")
        data = num_devices // fixed
    if data * fixed > num_devices or (data * fixed < num_devices and jax.process_count() > 1):
        raise MeshError(
            f"mesh: data*fsdp*tensor*expert = {data}*{mesh_config.fsdp}*{mesh_config.tensor}*{mesh_config.expert}"
            f" = {data * fixed}, but there are {num_devices} devices"
        )
    return data, mesh_config.fsdp, mesh_config.tensor, mesh_config.expert


def make_mesh(mesh_config, devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor", "expert") mesh over `devices` (default: all devices of the job)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = mesh_config.dcn_data
    if slices > 1:
        if len(devices) % slices:
            raise MeshError(f"mesh.dcn_data={slices} does not divide the {len(devices)} devices")
        data, fsdp, tensor, expert = mesh_shape(mesh_config, len(devices) // slices)
        if not hasattr(devices[0], "slice_index"):  # simulated devices (tests): consecutive blocks are the slices
            return Mesh(np.asarray(devices).reshape(slices * data, fsdp, tensor, expert), MESH_AXES)
        grid = mesh_utils.create_hybrid_device_mesh(
            (data, fsdp, tensor, expert), (slices, 1, 1, 1), devices=devices, allow_split_physical_axes=True
        )
        return Mesh(grid, MESH_AXES)
    shape = mesh_shape(mesh_config, len(devices))
    devices = devices[: math.prod(shape)]
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def resolve_rules(overrides: dict | None = None) -> dict[str, Any]:
    """The default table with the config's `mesh.rules` applied (unknown logical or mesh axes are config
    errors)."""
    rules = dict(DEFAULT_RULES)
    for logical, axes in (overrides or {}).items():
        if logical not in DEFAULT_RULES:
            raise MeshError(f"mesh.rules.{logical}: not a logical axis ({', '.join(DEFAULT_RULES)})")
        bad = [a for a in mesh_axes_of(axes) if a not in MESH_AXES]
        if bad:
            raise MeshError(f"mesh.rules.{logical}: {bad[0]!r} is not a mesh axis ({', '.join(MESH_AXES)})")
        rules[logical] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def _axis_size(mesh: Mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in mesh_axes_of(axes))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(params, mesh: Mesh, rules: dict):
    """NamedShardings for a parameter tree (nnx.State of real or abstract arrays) from each parameter's logical
    axes. A parameter created without them, or with a different number of axes than dimensions, is an error."""

    def one(path, variable):
        axes = logical_axes(variable)
        if axes is None or len(axes) != variable.ndim:
            found = "no logical axes" if axes is None else f"logical axes {axes}"
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path)} of shape {tuple(variable.shape)} has {found}: "
                "create it with jdistill.nn.params (param / dense / embedding)"
            )
        return variable.replace(NamedSharding(mesh, spec_for(axes, variable.shape, mesh, rules)))

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, rules: dict, ndim: int) -> NamedSharding:
    """Batch arrays split along their leading axis over the batch mesh axes."""
    names = mesh_axes_of(rules["batch"])
    return NamedSharding(
        mesh, PartitionSpec(names if len(names) > 1 else (names[0] if names else None), *([None] * (ndim - 1)))
    )


def batch_shardings(batch, mesh: Mesh, rules: dict):
    """Shardings for a batch dict; leaves whose leading size the batch axes do not divide are replicated."""
    size = _axis_size(mesh, rules["batch"])

    def one(leaf):
        if leaf.ndim == 0 or leaf.shape[0] % size:
            return NamedSharding(mesh, PartitionSpec())
        return batch_sharding(mesh, rules, leaf.ndim)

    return jax.tree.map(one, batch)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(state, mesh: Mesh, rules: dict):
    """Shardings for a `TrainState`: parameters by their logical axes; every other leaf that is a Variable made
    from a parameter (optax moments, EMA teachers, snapshots) by the axes it inherited; the rest (step, counts,
    recipe scalars and buffers) replicated."""
    return dataclasses.replace(
        state,
        step=replicated(mesh),
        params=param_shardings(state.params, mesh, rules),
        opt_state=inherited_shardings(state.opt_state, mesh, rules),
        recipe_state=inherited_shardings(state.recipe_state, mesh, rules),
    )


def inherited_shardings(tree, mesh: Mesh, rules: dict):
    """A Variable with as many dimensions as logical axes is sharded by them; one with a leading extra
    dimension (a stack over parameters, e.g. snapshots `[K, ...]`) keeps that dimension whole and shards the
    rest; anything else (plain arrays, Variables of another shape) is replicated."""

    def one(leaf):
        axes = logical_axes(leaf) if _is_variable(leaf) else None
        shape = tuple(getattr(leaf, "shape", ()))
        if axes is None or len(shape) not in (len(axes), len(axes) + 1):
            sharding = replicated(mesh)
        else:
            stacked = len(shape) - len(axes)
            spec = spec_for(axes, shape[stacked:], mesh, rules)
            sharding = NamedSharding(mesh, PartitionSpec(*([None] * stacked), *spec))
        return leaf.replace(sharding) if _is_variable(leaf) else sharding

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def shard(tree, shardings):
    """Place host arrays onto the mesh (every process passes the same full values)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def global_batch(local_batch: dict, shardings) -> dict:
    """Assemble per-process batch shards into global arrays (multi-host; identity layout on one process)."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x, s: jax.device_put(x, s), local_batch, shardings)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), local_batch, shardings)

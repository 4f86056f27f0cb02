"""The device mesh and the logical-axis rules that place parameters, optimizer state and batches on it.

Mesh axes: `data` (batch only), `fsdp` (batch and parameter shards: ZeRO-3 style, gathered per layer by XLA),
`tensor` (attention heads, MLP hidden units, vocabulary). Multi-slice jobs put `dcn_data` slices along the
data axis (`create_hybrid_device_mesh`), so only gradient all-reduces cross the data-centre network.

Parameters carry logical axes (`jdistill.models.partitioning`); `DEFAULT_RULES` maps each logical axis to mesh
axes, and `mesh.rules` in the config overrides entries. An axis whose mesh size does not divide the dimension
is replicated instead (small heads, odd vocabularies), never an error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdistill.errors import UserError
from jdistill.models.partitioning import tree_logical_axes

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "conv": None,
}


class MeshError(UserError):
    """The mesh in the config does not fit the devices."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes, with `data: -1` taking the devices the other axes leave. A mesh smaller than
    the devices is allowed on one process (it uses the first devices: `mesh.data=1` runs on one device)."""
    fixed = mesh_config.fsdp * mesh_config.tensor
    data = mesh_config.data
    if data == -1:
        if num_devices % fixed:
            raise MeshError(f"mesh: fsdp*tensor = {fixed} does not divide the {num_devices} devices")
        data = num_devices // fixed
    if data * fixed > num_devices or (data * fixed < num_devices and jax.process_count() > 1):
        raise MeshError(f"mesh: data*fsdp*tensor = {data}*{mesh_config.fsdp}*{mesh_config.tensor} = "
                        f"{data * fixed}, but there are {num_devices} devices")
    return data, mesh_config.fsdp, mesh_config.tensor


def make_mesh(mesh_config, devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of the job)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = mesh_config.dcn_data
    if slices > 1:
        if len(devices) % slices:
            raise MeshError(f"mesh.dcn_data={slices} does not divide the {len(devices)} devices")
        data, fsdp, tensor = mesh_shape(mesh_config, len(devices) // slices)
        grid = mesh_utils.create_hybrid_device_mesh((data, fsdp, tensor), (slices, 1, 1), devices=devices,
                                                    allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES)
    shape = mesh_shape(mesh_config, len(devices))
    devices = devices[: math.prod(shape)]
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def resolve_rules(overrides: dict | None = None) -> dict[str, Any]:
    """The default table with the config's `mesh.rules` applied (unknown mesh axes are a config error)."""
    rules = dict(DEFAULT_RULES)
    for logical, axes in (overrides or {}).items():
        names = axes if isinstance(axes, (list, tuple)) else (axes,)
        bad = [a for a in names if a is not None and a not in MESH_AXES]
        if bad:
            raise MeshError(f"mesh.rules.{logical}: {bad[0]!r} is not a mesh axis ({', '.join(MESH_AXES)})")
        rules[logical] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def _axis_size(mesh: Mesh, axes) -> int:
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in names if a is not None)


def spec_for(logical: tuple, shape: tuple, mesh: Mesh, rules: dict) -> PartitionSpec:
    """PartitionSpec for one array: each logical axis -> its mesh axes, unless they do not divide that dimension
    or were already used by an earlier dimension."""
    used, parts = set(), []
    for name, size in zip(logical, shape):
        axes = rules.get(name) if name is not None else None
        names = axes if isinstance(axes, tuple) else (axes,)
        names = tuple(a for a in names if a is not None and a not in used and mesh.shape[a] > 1)
        if not names or size % _axis_size(mesh, names):
            parts.append(None)
            continue
        used.update(names)
        parts.append(names if len(names) > 1 else names[0])
    return PartitionSpec(*parts)


def param_shardings(params, mesh: Mesh, rules: dict):
    """NamedShardings for a parameter tree (real or abstract arrays), from the logical axes of each path."""
    axes = tree_logical_axes(params)
    return jax.tree.map(lambda leaf, logical: NamedSharding(mesh, spec_for(logical, leaf.shape, mesh, rules)),
                        params, axes, is_leaf=lambda x: isinstance(x, tuple) and all(
                            a is None or isinstance(a, str) for a in x))


def batch_sharding(mesh: Mesh, rules: dict, ndim: int) -> NamedSharding:
    """Batch arrays split along their leading axis over the batch mesh axes."""
    axes = rules["batch"]
    names = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None)
    return NamedSharding(mesh, PartitionSpec(names if len(names) > 1 else (names[0] if names else None),
                                             *([None] * (ndim - 1))))


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
    """Shardings for a `TrainState`: parameters by their logical axes; optimizer moments follow the parameter
    they belong to (matched by path suffix); everything else (step, counts, recipe scalars) is replicated.
    Recipe-state subtrees shaped like the parameters (EMA teachers, snapshots) are sharded like them."""
    param_spec = param_shardings(state.params, mesh, rules)
    by_path = {_path_key(path): sharding for path, sharding in jax.tree_util.tree_flatten_with_path(param_spec)[0]}
    shapes = {_path_key(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}

    def like_param(path, leaf):
        key = _path_key(path)
        for suffix_len in range(len(key), 0, -1):
            suffix = key[-suffix_len:]
            sharding = by_path.get(suffix)
            if sharding is not None and shapes[suffix] == getattr(leaf, "shape", None):
                return sharding
            if suffix_len <= 2:
                break
        return _replicate_or_stacked(leaf, key, by_path, shapes, mesh)

    return dataclasses.replace(
        state,
        step=replicated(mesh),
        params=param_spec,
        opt_state=jax.tree_util.tree_map_with_path(like_param, state.opt_state),
        recipe_state=jax.tree_util.tree_map_with_path(like_param, state.recipe_state),
    )


def _replicate_or_stacked(leaf, key, by_path, shapes, mesh):
    """A leaf stacked over a leading axis of a parameter's shape (snapshots) keeps that parameter's spec."""
    shape = getattr(leaf, "shape", ())
    for suffix_len in range(len(key), 2, -1):
        suffix = key[-suffix_len:]
        if suffix in by_path and tuple(shape[1:]) == tuple(shapes[suffix]):
            return NamedSharding(mesh, PartitionSpec(None, *by_path[suffix].spec))
    return replicated(mesh)


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def shard(tree, shardings):
    """Place host arrays onto the mesh (every process passes the same full values)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def global_batch(local_batch: dict, shardings) -> dict:
    """Assemble per-process batch shards into global arrays (multi-host; identity layout on one process)."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x, s: jax.device_put(x, s), local_batch, shardings)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), local_batch,
                        shardings)

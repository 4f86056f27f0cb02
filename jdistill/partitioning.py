"""Logical axes: the names parameters and activations carry, the one table that maps them to mesh axes, and the
context that tells layers and kernels which table the current step was built with (the MaxText convention).

Every parameter names each of its dimensions when it is created (`jdistill.nn.params`: the Flax NNX
`out_sharding` metadata of the `nnx.Param`, never applied eagerly), e.g. an MLP's up projection is
`("embed", "mlp")`. `DEFAULT_RULES` maps each logical name to mesh axes of the `("data", "fsdp", "tensor",
"expert")` mesh (`jdistill.train.sharding.make_mesh`); the config's `mesh.rules` overrides entries
(`jdistill.train.sharding.resolve_rules`). Consumers:
  - parameter, optimizer-state, recipe-state and teacher shardings (`jdistill.train.sharding`) read the names
    from each Variable's metadata; optax moments and EMA copies are Variables built from the parameters, so they
    carry the same names;
  - activations (`constrain`, e.g. the transformer's residual stream `("batch", None, None)`) and the per-shard
    attention kernels (`jdistill.kernels.attention`) read the table of `axis_rules`, the context the train step
    traces under; outside it they use `DEFAULT_RULES`.
A mesh axis that does not divide the dimension, is absent or of size 1, or was used by an earlier dimension of
the same array leaves that dimension unsharded (small heads, odd vocabularies), never an error.

The rules are read while a function is traced, and `jax.jit` caches traces by function (not by these rules): a
function traced under other rules must be a new function, as the train step is (built per stage with its rules).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import PartitionSpec

# `expert` (expert parallelism) is last, as in MaxText: the mesh's last axes get the closest devices. Outside the
# mixture-of-experts layers it splits the batch like `data`, so no device idles; of size 1 it changes nothing.
MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis -> mesh axis, tuple of mesh axes, or None (unsharded). Every logical name a parameter or an
# activation uses must be a key here (tests/models/test_partitioning.py checks every model kind).
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp", "expert"),  # the leading axis of batches and activations
    "embed": "fsdp",  # d_model: parameter shards gathered per layer (ZeRO-3)
    "vocab": "tensor",  # the output head's outputs (vocabulary or classes) and the embedding's rows
    "heads": "tensor",  # attention and linear-mixer projections' head channels, per-head vectors
    "mlp": "tensor",  # MLP hidden units
    "conv": None,  # taps of the Gated DeltaNet's causal depthwise convolution
    "norm": None,  # normalisation scales
    "patch": None,  # pixels of one flattened image patch (the patch embedding's input)
    "position": None,  # rows of a learned position table
    "gate": None,  # GateSkip residual gates' outputs
    "layers": None,  # per-layer tables (exit layer embeddings' rows, head-gate rows)
    "layer_embed": None,  # features of the exits' layer embedding
    "projection": None,  # feature distillation's projection outputs (the teacher's width)
    "expert": "expert",  # the expert dimension of mixture-of-experts weights (expert parallelism)
    "router": None,  # the MoE router's outputs (one logit per expert; small, kept whole)
}

# The Variable metadata key that holds a parameter's logical axes (Flax NNX's sharding annotation).
AXES_METADATA = "out_sharding"

_RULES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("jdistill_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, Any]):
    """Trace layers and kernels under `rules` (the table the step's shardings were made with)."""
    token = _RULES.set(dict(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> Mapping[str, Any]:
    """The rules of the enclosing `axis_rules`, or `DEFAULT_RULES`."""
    rules = _RULES.get()
    return DEFAULT_RULES if rules is None else rules


def mesh_axes_of(rule) -> tuple[str, ...]:
    """A rule entry (None, one mesh axis, or a tuple of them) as a tuple of mesh axes."""
    names = rule if isinstance(rule, (tuple, list)) else (rule,)
    return tuple(a for a in names if a is not None)


def logical_axes(variable) -> tuple | None:
    """The logical axes a Variable was created with, or None when it carries no annotation."""
    metadata = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    axes = metadata.get(AXES_METADATA)
    return None if axes is None else tuple(axes)


def spec_for(logical: tuple, shape: tuple, mesh, rules: Mapping[str, Any]) -> PartitionSpec:
    """PartitionSpec of one array: each logical axis -> its mesh axes (None: unsharded), unless they do not
    divide that dimension or an earlier dimension already uses them. `mesh`: a Mesh or an AbstractMesh."""
    used: set[str] = set()
    parts: list[str | tuple[str, ...] | None] = []
    for name, size in zip(logical, shape, strict=True):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule (known: {', '.join(sorted(rules))})")
        names = mesh_axes_of(rules[name]) if name is not None else ()
        names = tuple(a for a in names if a not in used and mesh.shape.get(a, 1) > 1)
        if not names or size % math.prod(mesh.shape[a] for a in names):
            parts.append(None)
            continue
        used.update(names)
        parts.append(names if len(names) > 1 else names[0])
    return PartitionSpec(*parts)


def constrain(x, logical: tuple):
    """`x` laid out by its logical axes (None: replicated along that dimension) under the current mesh
    (`jax.set_mesh` / `use_abstract_mesh`) and rules; without it XLA may follow a parameter's layout (the
    embedding's `embed` shards) and replicate activations. A no-op outside a mesh or when no axis is sharded."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = spec_for(logical, x.shape, mesh, current_rules())
    if all(part is None for part in spec):
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def constrain_batch(x):
    """`x [batch, ...]` split over the batch mesh axes of the current rules, the other dimensions replicated."""
    return constrain(x, ("batch",) + (None,) * (x.ndim - 1))

"""Logical axis names of every transformer parameter, by its path.

Parameters carry logical axes (`embed`, `mlp`, `heads`, `vocab`, `conv`, ...); `jdistill.train.sharding` maps
them to mesh axes with a rule table from the config (the MaxText convention). A parameter that matches no rule
here is replicated; so is any axis its mesh axes do not divide.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import PartitionSpec

# Mesh axes that split the batch dimension of activations (jdistill.train.sharding.DEFAULT_RULES["batch"]).
BATCH_MESH_AXES = ("data", "fsdp")

# (regular expression over "a/b/c" parameter paths, logical axes of that parameter); first match wins.
PARAMETER_AXES: tuple[tuple[str, tuple], ...] = (
    (r"(^|/)embed/embedding$", ("vocab", "embed")),
    (r"^embed/kernel$", (None, "embed")),
    (r"^position$", (None, "embed")),
    (r"(^|/)head/kernel$", ("embed", "vocab")),
    (r"(^|/)head/bias$", ("vocab",)),
    (r"attention/(query_and_gate|key_value|query|key|value|in_proj_qkvz|in_proj_ba|forget_gate|refine_gate)"
     r"/kernel$", ("embed", "heads")),
    (r"attention/(forget_gate|refine_gate)/bias$", ("heads",)),
    (r"attention/(output|out_proj)/kernel$", ("heads", "embed")),
    (r"attention/conv_weight$", ("conv", "heads")),
    (r"mlp/(up|gate)/kernel$", ("embed", "mlp")),
    (r"mlp/(up|gate)/bias$", ("mlp",)),
    (r"mlp/down/kernel$", ("mlp", "embed")),
    (r"_gate/projection/kernel$", ("embed", None)),
)


def path_string(path) -> str:
    """"blocks/0/mlp/up/kernel" for a pytree key path (NNX's `.value` leaf suffix dropped)."""
    parts = [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]
    return "/".join(part for part in parts if part not in (".value", "value"))


def logical_axes(path: str, ndim: int) -> tuple:
    """The logical axes of the parameter at `path` (all None when no rule names it)."""
    for pattern, axes in PARAMETER_AXES:
        if re.search(pattern, path) and len(axes) == ndim:
            return axes
    return (None,) * ndim


def tree_logical_axes(params):
    """A pytree like `params` whose leaves are the logical-axes tuples."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: logical_axes(path_string(path), leaf.ndim), params)


def constrain_batch(x):
    """Keep activations `[batch, ...]` split over the batch mesh axes when traced under a mesh (`jax.set_mesh`);
    without it XLA may follow a parameter's layout (the embedding's `embed` shards) and replicate activations.
    A no-op outside a mesh or when the axes do not divide the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_MESH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    if not axes or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(axes, *([None] * (x.ndim - 1))))

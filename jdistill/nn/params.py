"""Parameters created with their logical axes (`jdistill.partitioning`): every `nnx.Param` of jdistill's layers
is made here, so its sharding is declared where it is made, not guessed from its path later.

The axes are Flax NNX's `out_sharding` metadata with `eager_sharding=False`: they are logical names, mapped to
mesh axes only when `jdistill.train.sharding` places the state, so building a model needs no mesh.
"""

from __future__ import annotations

from flax import nnx

from jdistill.partitioning import AXES_METADATA


def axes_metadata(axes: tuple[str | None, ...]) -> dict:
    """Variable metadata naming each dimension of a parameter (one logical name per dimension)."""
    return {AXES_METADATA: tuple(axes), "eager_sharding": False}


def param(value, axes: tuple[str | None, ...]) -> nnx.Param:
    """`nnx.Param(value)` with logical axes; `len(axes)` must equal `value.ndim`."""
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {axes} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, **axes_metadata(axes))


def dense(in_features: int, out_features: int, axes: tuple[str, str], **kwargs) -> nnx.Linear:
    """`nnx.Linear` whose kernel `[in, out]` has logical axes `axes` and whose bias `[out]` has `axes[1]`."""
    return nnx.Linear(
        in_features, out_features, kernel_metadata=axes_metadata(axes), bias_metadata=axes_metadata(axes[1:]), **kwargs
    )


def embedding(num_embeddings: int, features: int, axes: tuple[str, str], **kwargs) -> nnx.Embed:
    """`nnx.Embed` whose table `[num_embeddings, features]` has logical axes `axes`."""
    return nnx.Embed(num_embeddings, features, embedding_metadata=axes_metadata(axes), **kwargs)

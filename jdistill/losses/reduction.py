"""Reduction of per-position losses over valid tokens, shared by every token-level objective.

Token-level objectives reduce by *sum over valid positions / number of valid positions*
(docs/conventions.md#reductions).
`reduction="sum_count"` returns that sum and count separately so that gradient accumulation and
data-parallel shards can divide by the global count instead of averaging per-shard averages.
"""

from __future__ import annotations

from typing import Literal, overload

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

REDUCTIONS = ("mean", "sum", "sum_count", "none")
# The reductions that return one array (for the type checker: "sum_count" returns a `(sum, count)` pair).
ArrayReduction = Literal["mean", "sum", "none"]


def check_reduction(reduction: str) -> None:
    """Raises a one-line ValueError unless `reduction` is one of `REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")


@overload
def reduce_tokens(values: ArrayLike, mask: ArrayLike | None = ..., reduction: ArrayReduction = ...) -> Array: ...
@overload
def reduce_tokens(
    values: ArrayLike, mask: ArrayLike | None, reduction: Literal["sum_count"]
) -> tuple[Array, Array]: ...
@overload
def reduce_tokens(
    values: ArrayLike, mask: ArrayLike | None = ..., reduction: str = ...
) -> Array | tuple[Array, Array]: ...
def reduce_tokens(
    values: ArrayLike, mask: ArrayLike | None = None, reduction: str = "mean"
) -> Array | tuple[Array, Array]:
    """Reduces per-position losses `values` `[...]` over the positions where `mask` is true.

    Args:
      values: per-position losses, shape `[...]` (e.g. `[batch, seq]`).
      mask: None (every position counts) or a bool / 0-1 array broadcastable to `values.shape`;
        nonzero where a position counts.
      reduction: one of
        - "mean": sum over valid positions / number of valid positions; 0 (never NaN) when none is valid.
        - "sum": sum over valid positions.
        - "sum_count": the pair `(sum, count)` of scalars, so that `sum / count` is the "mean" result.
        - "none": `values` with masked positions set to 0 (shape `values.shape`).

    Returns:
      A scalar, a `(sum, count)` pair, or an array of `values.shape`; float32 (float64 for float64 values).
      Masked positions are selected away with `where`, so a non-finite value there never leaks
      into the result or its gradient.
    """
    check_reduction(reduction)
    values = jnp.asarray(values)
    values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
    if mask is None:
        valid = jnp.ones(values.shape, dtype=bool)
    else:
        valid = jnp.broadcast_to(jnp.asarray(mask) != 0, values.shape)
    kept = jnp.where(valid, values, jnp.zeros_like(values))
    if reduction == "none":
        return kept
    total = jnp.sum(kept)
    if reduction == "sum":
        return total
    count = jnp.sum(valid, dtype=values.dtype)
    if reduction == "sum_count":
        return total, count
    return total / jnp.maximum(count, 1.0)

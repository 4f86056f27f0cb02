"""Grouped matrix multiplication for dropless mixture-of-experts dispatch, with `jax.lax.ragged_dot` semantics:

    out[r] = x[r] @ w[e(r)]      for rows r of x [M, d] sorted into E consecutive groups of group_sizes [E] rows,
    out[r] = 0                   for rows past sum(group_sizes),

`w [E, d, f]`, `e(r)` the group of row r. On TPU and GPU this is `jax.lax.ragged_dot` (one grouped-matmul kernel,
M * d * f multiply-adds). XLA:CPU has no ragged-dot instruction: JAX lowers it there as a dense product of the rows
masked per group, `[E, M, d] x [E, d, f]`, E times the work (measured in docs/benchmarks.md, `jdistill bench moe`).
On CPU `grouped_matmul` therefore runs `blocked_grouped_matmul`: each group's rows are copied into whole blocks of
`block` rows (the last block of a group zero-padded), every block is multiplied by its group's weights in one
batched matmul (`[n_blocks, block, d] x [n_blocks, d, f]`, the weights gathered per block), and the rows are
gathered back. Work: (M + E * (block - 1)) * d * f at most, against M * d * f for the exact kernel (the
megablocks idea, Gale et al. 2023, with fixed-size blocks in place of a block-sparse kernel). Everything is a
gather, a scatter or a matmul, so the gradients are XLA's own.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def default_block(rows: int, groups: int) -> int:
    """Rows per block: about a quarter of a group's expected rows (rows / groups), a power of two in [8, 256];
    padding is then at most ~25 % of the rows when the groups are balanced."""
    target = max(rows // (4 * groups), 1)
    return int(min(256, max(8, 1 << (target.bit_length() - 1))))


class _Layout(NamedTuple):
    """Where the rows go: `source [capacity]` the row each block slot holds (`rows`: a padding slot), `dest [rows]`
    the slot of each row (`capacity`: a row past sum(group_sizes)), `block_group [capacity // block]`."""

    source: jax.Array
    dest: jax.Array
    block_group: jax.Array
    block: int


def _group_of(index, ends):
    """The group each `index` falls in, for groups ending (exclusive) at the increasing `ends [E]`, clipped to the
    last group: a comparison against every end (E is small; XLA:CPU runs `searchsorted`'s loop slowly)."""
    return jnp.minimum(jnp.sum(index[:, None] >= ends[None, :], axis=1), ends.shape[0] - 1).astype(jnp.int32)


def _layout(rows: int, group_sizes, block: int) -> _Layout:
    groups = group_sizes.shape[0]
    sizes = group_sizes.astype(jnp.int32)
    starts = jnp.cumsum(sizes) - sizes
    padded = (sizes + block - 1) // block * block
    padded_starts = jnp.cumsum(padded) - padded
    capacity = (rows + groups * (block - 1)) // block * block  # static bound of sum(padded)
    slot = jnp.arange(capacity, dtype=jnp.int32)
    slot_group = _group_of(slot, padded_starts + padded)
    offset = slot - padded_starts[slot_group]
    source = jnp.where(offset < sizes[slot_group], starts[slot_group] + offset, rows)
    row = jnp.arange(rows, dtype=jnp.int32)
    row_group = _group_of(row, starts + sizes)
    dest = jnp.where(row < jnp.sum(sizes), padded_starts[row_group] + row - starts[row_group], capacity)
    return _Layout(source, dest, slot_group[::block], block)


def _to_blocks(x, layout: _Layout):
    """`x [rows, n]` -> `[blocks, block, n]` (padding slots zero): a gather, never a scatter."""
    return x.at[layout.source].get(mode="fill", fill_value=0).reshape(-1, layout.block, x.shape[1])


def _from_blocks(blocks, layout: _Layout):
    """`[blocks, block, n]` -> `[rows, n]` (rows past sum(group_sizes) zero)."""
    return blocks.reshape(-1, blocks.shape[-1]).at[layout.dest].get(mode="fill", fill_value=0)


def _blocked(x, w, layout: _Layout):
    return _from_blocks(jnp.einsum("nbd,ndf->nbf", _to_blocks(x, layout), w[layout.block_group]), layout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _blocked_product(x, w, source, dest, block_group, block):
    return _blocked(x, w, _Layout(source, dest, block_group, block))


def _blocked_forward(x, w, source, dest, block_group, block):
    return _blocked_product(x, w, source, dest, block_group, block), (x, w, source, dest, block_group)


def _blocked_backward(block, residuals, grad):
    """d x = grad W_g^T per group (the same blocked product, transposed weights); d W_g = sum over g's blocks of
    x_block^T grad_block: gathers and matmuls only (autodiff of the gathers would scatter-add, slow on XLA:CPU)."""
    x, w, source, dest, block_group = residuals
    layout = _Layout(source, dest, block_group, block)
    grad_x = _blocked(grad, jnp.swapaxes(w, 1, 2), layout)
    per_block = jnp.einsum("nbd,nbf->ndf", _to_blocks(x, layout), _to_blocks(grad, layout))
    owner = jax.nn.one_hot(block_group, w.shape[0], dtype=per_block.dtype)
    grad_w = jnp.einsum("ne,ndf->edf", owner, per_block)
    return grad_x.astype(x.dtype), grad_w.astype(w.dtype), None, None, None


_blocked_product.defvjp(_blocked_forward, _blocked_backward)


def blocked_grouped_matmul(x, w, group_sizes, *, block: int | None = None):
    """`jax.lax.ragged_dot(x, w, group_sizes)` by fixed-size blocks (see the module docstring)."""
    layout = _layout(x.shape[0], group_sizes, block or default_block(x.shape[0], w.shape[0]))
    return _blocked_product(x, w, layout.source, layout.dest, layout.block_group, layout.block)


def grouped_matmul(x, w, group_sizes, *, block: int | None = None):
    """`x [M, d]` (rows sorted by group) times `w [E, d, f]` per group -> `[M, f]`: `jax.lax.ragged_dot` on TPU and
    GPU, `blocked_grouped_matmul` on CPU (chosen when the program is lowered, so an ahead-of-time compile for a
    TPU from a CPU host gets the TPU kernel)."""
    return jax.lax.platform_dependent(
        x,
        w,
        group_sizes,
        cpu=functools.partial(blocked_grouped_matmul, block=block),
        default=jax.lax.ragged_dot,
    )

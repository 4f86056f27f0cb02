"""The experts of a mixture-of-experts layer without `jax.lax.ragged_dot`: the dropless dispatch on CPU, where XLA
expands ragged_dot into E dense masked matmuls (docs/moe.md#dispatch).

The T k (token, expert) assignments are sorted by expert (stable). With a static capacity C (the mean group T k / E
rounded down to a multiple of 8), the first C assignments of every expert go to a `[E, C, d]` batch that runs as
three batched matmuls (one `[C, d] x [d, f]` product per expert, as large as the mean group): the bulk of the work
in few, large products. An expert's assignments past C (its *overflow*, from uneven routing) run in blocks of B
rows, one block per step of a loop whose trip count is the number of blocks in use (MegaBlocks' layout, Gale et
al. 2022: every block belongs to one expert; the last block of an expert is padded), so dispatch stays dropless
and exact whatever the routing. The work is E C + (blocks in use) B rows: for balanced routing a few percent over
T k, at worst (every token on the same experts) about twice T k.

Backward: the batch by autodiff of its three matmuls; the overflow loop by a hand-written backward (textbook
SwiGLU gradients per block, recomputing its forward; weight gradients summed in place per expert in float32).
Row moves are gathers both ways: each slot knows its assignment and each assignment its slot, so the backward of a
gather is a gather, not a scatter-add.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def capacity(rows: int, num_experts: int) -> int:
    """Batched rows per expert: the mean group `rows / num_experts` rounded down to a multiple of 8, at least 8."""
    return max(8, rows // num_experts // 8 * 8)


def block_size(capacity: int) -> int:
    """Rows per overflow block: C / 8 in [8, 64] (small blocks pad little; the overflow of balanced routing is
    about one standard deviation of a group, ~sqrt(C))."""
    return max(8, min(64, capacity // 8))


@jax.custom_vjp
def _take_rows(src, index, back_index, back_valid):
    """`src[index]`; its cotangent is gathered back through `back_index` (the output rows that read each source
    row, `[src_rows * m]`, masked by `back_valid`) and summed over the m readers of each row."""
    return src[index]


def _take_rows_fwd(src, index, back_index, back_valid):
    return src[index], (src.shape[0], back_index, back_valid)


def _take_rows_bwd(residuals, d_out):
    rows, back_index, back_valid = residuals
    d_src = jnp.where(back_valid[:, None], d_out[back_index], 0).reshape(rows, -1, d_out.shape[-1]).sum(1)
    return d_src, None, None, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


class Plan(NamedTuple):
    """Where each of the T k assignments (token t's j-th at t k + j) goes, for capacity C and blocks of B rows."""

    order: jax.Array  # [T k] the assignments sorted by expert (stable)
    batched: jax.Array  # [T k] bool: the assignment is among its expert's first C (in the batch)
    slot: jax.Array  # [T k] its batch slot e C + rank (0 when it overflows)
    slot_assignment: jax.Array  # [E C] the assignment in each batch slot (0 when empty)
    slot_used: jax.Array  # [E C] bool: the slot holds an assignment
    block_expert: jax.Array  # [n] expert of each overflow block (n a static bound)
    block_start: jax.Array  # [n] its first row in sorted order
    block_end: jax.Array  # [n] the end of its expert's group in sorted order (rows from there are padding)
    blocks: jax.Array  # the number of overflow blocks in use


def plan(experts, num_experts: int, capacity: int, size: int) -> Plan:
    """The dispatch `Plan` of `experts [T, k]` (each assignment's expert)."""
    rows = experts.size
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    start = jnp.cumsum(sizes) - sizes
    position = jnp.zeros((rows,), jnp.int32).at[order].set(jnp.arange(rows, dtype=jnp.int32))
    rank = position - start[flat]
    batched = rank < capacity
    column = jnp.arange(capacity, dtype=jnp.int32)
    slot_used = column[None, :] < sizes[:, None]
    slot_assignment = jnp.where(slot_used, order[jnp.minimum(start[:, None] + column, rows - 1)], 0)
    overflow_blocks = (jnp.maximum(sizes - capacity, 0) + size - 1) // size
    blocks_end = jnp.cumsum(overflow_blocks)
    bound = -(-max(rows - capacity, 0) // size) + num_experts  # sum_e ceil(overflow_e / B) for any routing
    block = jnp.arange(bound, dtype=jnp.int32)
    block_expert = jnp.minimum(jnp.searchsorted(blocks_end, block, side="right"), num_experts - 1).astype(jnp.int32)
    first_block = (blocks_end - overflow_blocks)[block_expert]
    return Plan(
        order=order,
        batched=batched,
        slot=jnp.where(batched, flat * capacity + rank, 0),
        slot_assignment=slot_assignment.reshape(-1),
        slot_used=slot_used.reshape(-1),
        block_expert=block_expert,
        block_start=start[block_expert] + capacity + (block - first_block) * size,
        block_end=start[block_expert] + sizes[block_expert],
        blocks=blocks_end[-1],
    )


def _silu_parts(gate):
    sig = jax.nn.sigmoid(gate)
    return gate * sig, sig * (1 + gate * (1 - sig))  # silu(g), silu'(g)


def _rows_t(a, b):
    """`a^T b` for `a [n, i]`, `b [n, j]`."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _times_t(a, w):
    """`a w^T` for `a [n, j]`, `w [i, j]`."""
    return jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())))


def _block_rows(order, i, block_start, block_end, size: int):
    """(assignments of overflow block i `[B]`, which of its rows are real `[B]`); `order` is padded by B rows."""
    start = block_start[i]
    assignments = jax.lax.dynamic_slice(order, (start,), (size,))
    return assignments, start + jnp.arange(size) < block_end[i]


def _bdot(a, b, a_contract: int, b_contract: int):
    """Per expert (leading axis): `a[e]` contracted with `b[e]` over the given axes."""
    return jax.lax.dot_general(a, b, (((a_contract,), (b_contract,)), ((0,), (0,))))


@jax.custom_vjp
def _batched_swiglu(xb, w_gate, w_up, w_down):
    """`(silu(x G_e) * (x U_e)) D_e` for each expert's rows `xb [E, C, d]`."""
    return _batched_swiglu_fwd(xb, w_gate, w_up, w_down)[0]


def _batched_swiglu_fwd(xb, w_gate, w_up, w_down):
    gate, up = _bdot(xb, w_gate, 2, 1), _bdot(xb, w_up, 2, 1)
    return _bdot(jax.nn.silu(gate) * up, w_down, 2, 1), (xb, w_gate, w_up, w_down, gate, up)


def _batched_swiglu_bwd(residuals, d_out):
    xb, w_gate, w_up, w_down, gate, up = residuals
    silu, slope = _silu_parts(gate)
    d_down_w = _bdot(silu * up, d_out, 1, 1)
    d_hidden = _bdot(d_out, w_down, 2, 2)
    d_gate, d_up = d_hidden * up * slope, d_hidden * silu
    d_xb = _bdot(d_gate, w_gate, 2, 2) + _bdot(d_up, w_up, 2, 2)
    return d_xb, _bdot(xb, d_gate, 1, 1), _bdot(xb, d_up, 1, 1), d_down_w


_batched_swiglu.defvjp(_batched_swiglu_fwd, _batched_swiglu_bwd)


@jax.custom_vjp
def _combine(rows, weights, slot, batched, slot_assignment, slot_used):
    """`y [T, d]`: y_t = sum_j [assignment (t, j) batched] weights[t, j] rows[slot[t, j]], for the batch's output
    `rows [E C, d]`. Gathers both ways: the backward reads dy at each slot's token (no scatter-add)."""
    tokens, k = weights.shape
    used = jnp.where(batched.reshape(tokens, k), weights, 0).astype(rows.dtype)
    return jnp.sum(rows[slot.reshape(tokens, k)] * used[..., None], axis=1)


def _combine_fwd(rows, weights, slot, batched, slot_assignment, slot_used):
    y = _combine(rows, weights, slot, batched, slot_assignment, slot_used)
    return y, (rows, weights, slot, batched, slot_assignment, slot_used)


def _combine_bwd(residuals, d_y):
    rows, weights, slot, batched, slot_assignment, slot_used = residuals
    tokens, k = weights.shape
    scale = jnp.where(slot_used, weights.reshape(-1)[slot_assignment], 0).astype(d_y.dtype)
    d_rows = d_y[slot_assignment // k] * scale[:, None]
    d_weights = jnp.sum(rows[slot.reshape(tokens, k)] * d_y[:, None, :], axis=-1, dtype=jnp.float32)
    d_weights = jnp.where(batched.reshape(tokens, k), d_weights, 0).astype(weights.dtype)
    return d_rows, d_weights, None, None, None, None


_combine.defvjp(_combine_fwd, _combine_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(11, 12))
def _overflow(y, x, weights, w_gate, w_up, w_down, order, block_expert, block_start, block_end, blocks, k, size):
    """`y` plus, for each overflowing assignment (token t's j-th, expert e), weights[t, j] FFN_e(x_t) at row t."""
    padded = jnp.concatenate([order, jnp.zeros((size,), order.dtype)])
    flat_weights = weights.reshape(-1)

    def step(i, y):
        assignments, real = _block_rows(padded, i, block_start, block_end, size)
        e, tokens = block_expert[i], assignments // k
        xb = x[tokens]
        out = (jax.nn.silu(xb @ w_gate[e]) * (xb @ w_up[e])) @ w_down[e]
        scale = jnp.where(real, flat_weights[assignments], 0).astype(out.dtype)
        return y.at[tokens].add((out * scale[:, None]).astype(y.dtype))

    return jax.lax.fori_loop(0, blocks, step, y)


def _overflow_fwd(y, x, weights, w_gate, w_up, w_down, order, block_expert, block_start, block_end, blocks, k, size):
    plan_ = (order, block_expert, block_start, block_end, blocks)
    out = _overflow(y, x, weights, w_gate, w_up, w_down, *plan_, k, size)
    return out, (x, weights, w_gate, w_up, w_down, *plan_)


def _overflow_bwd(k, size, residuals, d_y):
    x, weights, w_gate, w_up, w_down, order, block_expert, block_start, block_end, blocks = residuals
    padded = jnp.concatenate([order, jnp.zeros((size,), order.dtype)])
    flat_weights = weights.reshape(-1)

    def step(i, grads):
        d_x, d_weights, d_gate_w, d_up_w, d_down_w = grads
        assignments, real = _block_rows(padded, i, block_start, block_end, size)
        e, tokens = block_expert[i], assignments // k
        xb, dy = x[tokens], d_y[tokens]
        g, u = xb @ w_gate[e], xb @ w_up[e]
        silu, slope = _silu_parts(g)
        hidden = silu * u
        d_scale = jnp.sum((hidden @ w_down[e]) * dy, axis=-1, dtype=jnp.float32)
        d_weights = d_weights.at[jnp.where(real, assignments, d_weights.shape[0])].set(d_scale, mode="drop")
        d_out = dy * jnp.where(real, flat_weights[assignments], 0).astype(dy.dtype)[:, None]
        d_down_w = d_down_w.at[e].add(_rows_t(hidden, d_out).astype(d_down_w.dtype))
        d_hidden = _times_t(d_out, w_down[e])
        d_g, d_u = d_hidden * u * slope, d_hidden * silu
        d_gate_w = d_gate_w.at[e].add(_rows_t(xb, d_g).astype(d_gate_w.dtype))
        d_up_w = d_up_w.at[e].add(_rows_t(xb, d_u).astype(d_up_w.dtype))
        d_xb = _times_t(d_g, w_gate[e]) + _times_t(d_u, w_up[e])  # zero on padding rows (d_out = 0 there)
        return d_x.at[tokens].add(d_xb.astype(d_x.dtype)), d_weights, d_gate_w, d_up_w, d_down_w

    matrices = (w_gate, w_up, w_down)
    zeros = (
        jnp.zeros(x.shape, jnp.float32),
        jnp.zeros((weights.size,), jnp.float32),
        *(jnp.zeros(w.shape, jnp.float32) for w in matrices),
    )
    d_x, d_weights, *d_matrices = jax.lax.fori_loop(0, blocks, step, zeros)  # float32 sums whatever the dtype
    d_matrices = tuple(g.astype(w.dtype) for g, w in zip(d_matrices, matrices, strict=True))
    d_weights = d_weights.reshape(weights.shape).astype(weights.dtype)
    return (d_y, d_x.astype(x.dtype), d_weights, *d_matrices, None, None, None, None, None)


_overflow.defvjp(_overflow_fwd, _overflow_bwd)


def moe_blocked(x, weights, experts, w_gate, w_up, w_down):
    """sum_j weights[t, j] FFN_{experts[t, j]}(x_t), `[T, d]`: `x [T, d]`, routing `weights` and `experts [T, k]`,
    `w_gate`, `w_up` `[E, d, f]`, `w_down [E, f, d]`."""
    num_experts = w_gate.shape[0]
    cap = capacity(experts.size, num_experts)
    size = block_size(cap)
    p = plan(experts, num_experts, cap, size)
    k = experts.shape[1]
    xb = _take_rows(x, p.slot_assignment // k, p.slot, p.batched).reshape(num_experts, cap, -1)
    rows = _batched_swiglu(xb, w_gate, w_up, w_down).reshape(num_experts * cap, -1)
    y = _combine(rows, weights, p.slot, p.batched, p.slot_assignment, p.slot_used)
    overflow_plan = (p.order, p.block_expert, p.block_start, p.block_end, p.blocks)
    return _overflow(y, x, weights, w_gate, w_up, w_down, *overflow_plan, k, size)

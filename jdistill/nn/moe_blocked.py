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


class Blocks(NamedTuple):
    """Overflow blocks of one size, each within one expert's group of the sorted assignments."""

    expert: jax.Array  # [n] the expert of each block (n a static bound)
    start: jax.Array  # [n] its first row in sorted order
    end: jax.Array  # [n] the end of its expert's group in sorted order (rows from there are padding)
    used: jax.Array  # the number of blocks in use


class Plan(NamedTuple):
    """Where each of the T k assignments (token t's j-th at t k + j) goes, for capacity C and blocks of B rows."""

    order: jax.Array  # [T k] the assignments sorted by expert (stable)
    batched: jax.Array  # [T k] bool: the assignment is among its expert's first C (in the batch)
    slot: jax.Array  # [T k] its batch slot e C + rank (0 when it overflows)
    slot_assignment: jax.Array  # [E C] the assignment in each batch slot (0 when empty)
    slot_used: jax.Array  # [E C] bool: the slot holds an assignment
    big: Blocks  # an expert's overflow in whole blocks of BIG B rows first,
    small: Blocks  # then the rest in blocks of B rows (the last one padded)


BIG = 4  # big overflow blocks hold BIG * B rows: a heavily loaded expert runs larger products


def _blocks(first, rows, group_end, size: int, bound: int) -> Blocks:
    """Blocks of `size` rows covering rows [first_e, first_e + rows_e) of sorted order for every expert e."""
    per_expert = (rows + size - 1) // size
    ends = jnp.cumsum(per_expert)
    block = jnp.arange(bound, dtype=jnp.int32)
    expert = jnp.minimum(jnp.searchsorted(ends, block, side="right"), first.shape[0] - 1).astype(jnp.int32)
    start = first[expert] + (block - (ends - per_expert)[expert]) * size
    return Blocks(expert=expert, start=start, end=group_end[expert], used=ends[-1])


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
    overflow = jnp.maximum(sizes - capacity, 0)
    big_rows = overflow // (BIG * size) * (BIG * size)
    left = max(rows - capacity, 0)  # no routing overflows more rows than this
    small_bound = min(BIG, -(-left // size)) * num_experts + 1  # at most BIG small blocks per expert
    return Plan(
        order=order,
        batched=batched,
        slot=jnp.where(batched, flat * capacity + rank, 0),
        slot_assignment=slot_assignment.reshape(-1),
        slot_used=slot_used.reshape(-1),
        big=_blocks(start + capacity, big_rows, start + sizes, BIG * size, left // (BIG * size) + 1),
        small=_blocks(start + capacity + big_rows, overflow - big_rows, start + sizes, size, small_bound),
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


def _bdot(a, b, a_contract: int, b_contract: int):
    """Per expert (leading axis): `a[e]` contracted with `b[e]` over the given axes."""
    return jax.lax.dot_general(a, b, (((a_contract,), (b_contract,)), ((0,), (0,))))


def _batch_weights(weights, p: Plan):
    """The routing weight of each batched assignment `[T, k]`, zero for the overflowing ones."""
    return jnp.where(p.batched.reshape(weights.shape), weights, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _experts(x, weights, w_gate, w_up, w_down, p: Plan, cap: int, size: int):
    """sum_j weights[t, j] FFN_{experts[t, j]}(x_t) `[T, d]`, dispatched by the plan `p` (capacity `cap`, overflow
    blocks of `size` rows)."""
    return _experts_fwd(x, weights, w_gate, w_up, w_down, p, cap, size)[0]


def _overflow_step(weights, order, blocks: Blocks, i, k: int, size: int):
    """(assignments, their tokens, their routing weights (0 on padding), which rows are real, the expert) of block
    i of `blocks`; `order` is padded so that a block may read past its end."""
    start = blocks.start[i]
    assignments = jax.lax.dynamic_slice(order, (start,), (size,))
    real = start + jnp.arange(size) < blocks.end[i]
    scale = jnp.where(real, weights.reshape(-1)[assignments], 0)
    return assignments, assignments // k, scale, real, blocks.expert[i]


def _experts_fwd(x, weights, w_gate, w_up, w_down, p: Plan, cap: int, size: int):
    (tokens, k), num_experts = weights.shape, w_gate.shape[0]
    xb = x[p.slot_assignment // k].reshape(num_experts, cap, -1)
    gate, up = _bdot(xb, w_gate, 2, 1), _bdot(xb, w_up, 2, 1)
    rows = _bdot(jax.nn.silu(gate) * up, w_down, 2, 1).reshape(num_experts * cap, -1)
    y = jnp.sum(rows[p.slot.reshape(tokens, k)] * _batch_weights(weights, p).astype(rows.dtype)[..., None], axis=1)
    order = jnp.concatenate([p.order, jnp.zeros((BIG * size,), p.order.dtype)])  # blocks may read past the end
    padded = p._replace(order=order)
    for blocks, rows_per_block in ((p.big, BIG * size), (p.small, size)):

        def overflow(i, y, blocks=blocks, rows_per_block=rows_per_block):
            _, rows_tokens, scale, _, e = _overflow_step(weights, order, blocks, i, k, rows_per_block)
            xo = x[rows_tokens]
            out = (jax.nn.silu(xo @ w_gate[e]) * (xo @ w_up[e])) @ w_down[e]
            return y.at[rows_tokens].add((out * scale.astype(out.dtype)[:, None]).astype(y.dtype))

        y = jax.lax.fori_loop(0, blocks.used, overflow, y)
    return y, (x, weights, w_gate, w_up, w_down, padded, xb, gate, up, rows)


def _experts_bwd(cap, size, residuals, d_y):
    x, weights, w_gate, w_up, w_down, p, xb, gate, up, rows = residuals
    (tokens, k), num_experts = weights.shape, w_gate.shape[0]
    # the batch: gathers only (each slot knows its assignment, each assignment its slot)
    scale = jnp.where(p.slot_used, weights.reshape(-1)[p.slot_assignment], 0).astype(d_y.dtype)
    d_rows = (d_y[p.slot_assignment // k] * scale[:, None]).reshape(num_experts, cap, -1)
    d_weights = jnp.sum(rows[p.slot.reshape(tokens, k)] * d_y[:, None, :], axis=-1, dtype=jnp.float32)
    # (an overflowing assignment's entry, read from slot 0, is overwritten by the overflow loop below)
    silu, slope = _silu_parts(gate)
    d_down_w = _bdot(silu * up, d_rows, 1, 1)
    d_hidden = _bdot(d_rows, w_down, 2, 2)
    d_gate, d_up = d_hidden * up * slope, d_hidden * silu
    d_gate_w, d_up_w = _bdot(xb, d_gate, 1, 1), _bdot(xb, d_up, 1, 1)
    d_xb = (_bdot(d_gate, w_gate, 2, 2) + _bdot(d_up, w_up, 2, 2)).reshape(num_experts * cap, -1)
    d_x = jnp.where(p.batched[:, None], d_xb[p.slot], 0).reshape(tokens, k, -1).sum(1)

    def overflow(i, grads, blocks, rows_per_block):  # the overflow blocks' gradients, summed into the batch's
        d_x, d_weights, d_gate_w, d_up_w, d_down_w = grads
        assignments, rows_tokens, scale, real, e = _overflow_step(weights, p.order, blocks, i, k, rows_per_block)
        xo, dy = x[rows_tokens], d_y[rows_tokens]
        g, u = xo @ w_gate[e], xo @ w_up[e]
        silu, slope = _silu_parts(g)
        hidden = silu * u
        d_scale = jnp.sum((hidden @ w_down[e]) * dy, axis=-1, dtype=jnp.float32)
        d_weights = d_weights.reshape(-1).at[jnp.where(real, assignments, tokens * k)].set(d_scale, mode="drop")
        d_out = dy * scale.astype(dy.dtype)[:, None]
        d_down_w = d_down_w.at[e].add(_rows_t(hidden, d_out).astype(d_down_w.dtype))
        d_hidden = _times_t(d_out, w_down[e])
        d_g, d_u = d_hidden * u * slope, d_hidden * silu
        d_gate_w = d_gate_w.at[e].add(_rows_t(xo, d_g).astype(d_gate_w.dtype))
        d_up_w = d_up_w.at[e].add(_rows_t(xo, d_u).astype(d_up_w.dtype))
        d_xo = _times_t(d_g, w_gate[e]) + _times_t(d_u, w_up[e])  # zero on padding rows (d_out = 0 there)
        d_x = d_x.at[rows_tokens].add(d_xo.astype(d_x.dtype))
        return d_x, d_weights.reshape(tokens, k), d_gate_w, d_up_w, d_down_w

    grads = tuple(g.astype(jnp.float32) for g in (d_x, d_weights, d_gate_w, d_up_w, d_down_w))  # float32 sums
    for blocks, rows_per_block in ((p.big, BIG * size), (p.small, size)):
        step = functools.partial(overflow, blocks=blocks, rows_per_block=rows_per_block)
        grads = jax.lax.fori_loop(0, blocks.used, step, grads)
    return (*(g.astype(a.dtype) for g, a in zip(grads, (x, weights, w_gate, w_up, w_down), strict=True)), None)


_experts.defvjp(_experts_fwd, _experts_bwd)


def moe_blocked(x, weights, experts, w_gate, w_up, w_down, *, cap: int | None = None, size: int | None = None):
    """sum_j weights[t, j] FFN_{experts[t, j]}(x_t), `[T, d]`: `x [T, d]`, routing `weights` and `experts [T, k]`,
    `w_gate`, `w_up` `[E, d, f]`, `w_down [E, f, d]`. `cap` and `size` (static) replace `capacity` and
    `block_size`."""
    num_experts = w_gate.shape[0]
    cap = cap or capacity(experts.size, num_experts)
    size = size or block_size(cap)
    return _experts(x, weights, w_gate, w_up, w_down, plan(experts, num_experts, cap, size), cap, size)

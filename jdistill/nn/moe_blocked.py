"""The experts of a mixture-of-experts layer as a blocked grouped matmul: the dropless dispatch on CPU, where XLA
expands `jax.lax.ragged_dot` into E dense masked matmuls (docs/moe.md#dispatch).

MegaBlocks' layout (Gale et al. 2022, "MegaBlocks: Efficient Sparse Training with Mixture-of-Experts"): the T k
(token, expert) assignments are sorted by expert and each expert's group is padded to whole blocks of B rows, so
every block belongs to one expert. A static bound of ceil(T k / B) + E blocks keeps the shapes fixed; the padding
wastes at most (E + 1) B rows of work. The blocks run in a `lax.scan`, one `[B, d] x [d, f]` SwiGLU per step with
that block's expert weights, and the backward is written out (textbook SwiGLU gradients per block, the weight
gradients accumulated in place per expert, as `jdistill.nn.mlp_core` does for the dense MLP): autodiff of the scan
and of the row gathers leaves scatter-adds and transposed copies that cost more than the matmuls on CPU.
Row moves are gathers both ways: each slot knows its assignment, each assignment its slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_size(rows: int, num_experts: int) -> int:
    """Rows per block: the power of two at or below rows / (4 E) (a quarter of an expert's mean group: padding
    wastes E B / 2 rows on average), in [8, 256] (larger blocks, faster matmuls)."""
    return max(8, min(256, 1 << max(0, (rows // (4 * num_experts)).bit_length() - 1)))


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


def _plan(experts, num_experts: int, size: int):
    """(assignment of each padded slot (0 for padding), whether the slot holds one, slot of each assignment in
    assignment order, expert of each block)."""
    rows = experts.size
    blocks = -(-rows // size) + num_experts
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    group_start = jnp.cumsum(group_sizes) - group_sizes
    padded = (group_sizes + size - 1) // size * size
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    slots = jnp.arange(blocks * size, dtype=jnp.int32)
    expert_of_slot = jnp.minimum(jnp.searchsorted(padded_end, slots, side="right"), num_experts - 1)
    offset = slots - padded_start[expert_of_slot]
    valid = offset < group_sizes[expert_of_slot]  # past the last group: padding blocks of the last expert
    assignment_of_slot = order[jnp.where(valid, group_start[expert_of_slot] + offset, 0)]
    rank = jnp.argsort(order)  # sorted position of each assignment
    slot_of_assignment = padded_start[flat] + rank - group_start[flat]
    return assignment_of_slot, valid, slot_of_assignment, expert_of_slot[::size]


def _silu_parts(gate):
    sig = jax.nn.sigmoid(gate)
    return gate * sig, sig * (1 + gate * (1 - sig))  # silu(g), silu'(g)


def _rows_t(a, b):
    """`a^T b` for `a [n, i]`, `b [n, j]`."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _times_t(a, w):
    """`a w^T` for `a [n, j]`, `w [i, j]`."""
    return jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())))


def _scan_blocks(xb, block_expert, w_gate, w_up, w_down, keep: bool):
    """The blocks' SwiGLU outputs `[n, B, d]`, with the gate and up pre-activations when `keep` (the residuals)."""

    def step(_, inputs):
        x, e = inputs
        gate, up = x @ w_gate[e], x @ w_up[e]
        out = (jax.nn.silu(gate) * up) @ w_down[e]
        return None, (out, gate, up) if keep else out

    return jax.lax.scan(step, None, (xb, block_expert))[1]


@jax.custom_vjp
def _blocked_swiglu(xb, block_expert, w_gate, w_up, w_down):
    """`(silu(x G_e) * (x U_e)) D_e` for each block `xb [n, B, d]` of expert `block_expert [n]`."""
    return _scan_blocks(xb, block_expert, w_gate, w_up, w_down, keep=False)


def _blocked_swiglu_fwd(xb, block_expert, w_gate, w_up, w_down):
    out, gate, up = _scan_blocks(xb, block_expert, w_gate, w_up, w_down, keep=True)
    return out, (xb, block_expert, w_gate, w_up, w_down, gate, up)


def _blocked_swiglu_bwd(residuals, d_out):
    xb, block_expert, w_gate, w_up, w_down, gate, up = residuals

    def step(grads, inputs):
        d_gate_w, d_up_w, d_down_w = grads
        x, e, g, u, dy = inputs
        silu, slope = _silu_parts(g)
        d_down_w = d_down_w.at[e].add(_rows_t(silu * u, dy).astype(d_down_w.dtype))
        d_hidden = _times_t(dy, w_down[e])
        d_g, d_u = d_hidden * u * slope, d_hidden * silu
        d_gate_w = d_gate_w.at[e].add(_rows_t(x, d_g).astype(d_gate_w.dtype))
        d_up_w = d_up_w.at[e].add(_rows_t(x, d_u).astype(d_up_w.dtype))
        return (d_gate_w, d_up_w, d_down_w), _times_t(d_g, w_gate[e]) + _times_t(d_u, w_up[e])

    weights = (w_gate, w_up, w_down)
    zeros = tuple(jnp.zeros(w.shape, jnp.float32) for w in weights)  # float32 sums over blocks, whatever the dtype
    grads, d_xb = jax.lax.scan(step, zeros, (xb, block_expert, gate, up, d_out))
    return (d_xb, None, *(g.astype(w.dtype) for g, w in zip(grads, weights, strict=True)))


_blocked_swiglu.defvjp(_blocked_swiglu_fwd, _blocked_swiglu_bwd)


def expert_ffn_blocked(x, experts, w_gate, w_up, w_down):
    """FFN_{experts[t, j]}(x_t) for every assignment, `[T, k, d]`: `x [T, d]`, `experts [T, k]`, `w_gate`, `w_up`
    `[E, d, f]`, `w_down [E, f, d]`."""
    tokens, k = experts.shape
    size = block_size(experts.size, w_gate.shape[0])
    assignment_of_slot, valid, slot_of_assignment, block_expert = _plan(experts, w_gate.shape[0], size)
    every = jnp.ones(slot_of_assignment.shape, bool)
    xb = _take_rows(x, assignment_of_slot // k, slot_of_assignment, every).reshape(-1, size, x.shape[-1])
    out = _blocked_swiglu(xb, block_expert, w_gate, w_up, w_down).reshape(-1, w_down.shape[-1])
    return _take_rows(out, slot_of_assignment, assignment_of_slot, valid).reshape(tokens, k, -1)

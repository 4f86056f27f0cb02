"""Pieces shared by the Pallas flash-attention kernels (GPU and TPU): shape checks, padding, masks, gates.

The kernels compute, per query row i (Dao 2023, "FlashAttention-2", Algorithm 1, blocked over keys):

    s_ij = scale * q_i . k_j             masked to -inf where i may not see j
    m_i = max_j s_ij,  l_i = sum_j exp(s_ij - m_i),  a_i = sum_j exp(s_ij - m_i) v_j / l_i
    out_i = sigmoid(gate_i) * a_i        (Qiu et al. 2025, "Gated Attention for LLMs", G1 gate, in the epilogue)

and keep `lse_i = m_i + log l_i` for the backward pass, which uses (with `o = out`, `do` the output cotangent):

    da = do * sigmoid(gate),  D_i = sum_d (do * o)_id   (= sum_d da_id a_id),  p_ij = exp(s_ij - lse_i)
    dp = da v^T,  ds = p * (dp - D),  dq = scale ds k,  dk = scale ds^T q,  dv = p^T da
    dgate = do * o * (1 - sigmoid(gate))   (summed over head_dim for a headwise gate)

Rows whose keys are all masked give `out = 0` and zero gradients, as in the XLA reference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jdistill.kernels import support

NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Static parameters of one flash-attention call (hashable: it is a custom_vjp nondiff argument)."""

    scale: float
    causal: bool
    q_len: int  # unpadded lengths; padded positions are masked
    kv_len: int
    block_q: int
    block_k: int
    groups: int  # heads // kv_heads
    has_segments: bool
    gate_kind: str  # "none" | "headwise" | "elementwise"
    interpret: bool = False

    @property
    def causal_offset(self) -> int:
        return self.kv_len - self.q_len


def check_shapes(q, k, v, gate, segment_ids):
    """Raise a one-line ValueError for inconsistent attention inputs."""
    batch, q_len, heads, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [batch, kv_len, kv_heads, {head_dim}], got {k.shape} and {v.shape}")
    if heads % k.shape[2]:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({k.shape[2]})")
    if gate is not None and gate.shape not in ((batch, q_len, heads), q.shape):
        raise ValueError(f"gate must be [batch, q_len, heads] or q's shape {q.shape}, got {gate.shape}")
    if segment_ids is not None and (segment_ids.shape != (batch, q_len) or k.shape[1] != q_len):
        raise ValueError(f"segment_ids must be [batch, q_len] = {(batch, q_len)} with kv_len == q_len")


def gate_kind(gate) -> str:
    if gate is None:
        return "none"
    return "headwise" if gate.ndim == 3 else "elementwise"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pick_block(length: int, preferred: int, minimum: int) -> int:
    """The preferred block size, shrunk (to a power of two >= minimum) for short sequences."""
    block = preferred
    while block // 2 >= max(minimum, length):
        block //= 2
    return block


def pad_axis(x, axis: int, size: int, value=0):
    if x is None or x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def block_mask(cfg: FlashConfig, q_start, k_start, shape, q_seg=None, k_seg=None):
    """Boolean `[block_q, block_k]` mask for the block whose first query/key rows are `q_start`/`k_start`.

    `q_seg` is `[block_q, 1]` and `k_seg` `[1, block_k]` (or None). Keys past `kv_len` (padding) are masked.
    """
    q_pos = q_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    k_pos = k_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = k_pos < cfg.kv_len
    if cfg.causal:
        mask = mask & (k_pos <= q_pos + cfg.causal_offset)
    if q_seg is not None:
        mask = mask & (q_seg == k_seg)
    return mask


def causal_kv_blocks(cfg: FlashConfig, q_block, num_kv_blocks: int | jax.Array):
    """Number of leading kv blocks that query block `q_block` can see (all of them without causal)."""
    if not cfg.causal:
        return num_kv_blocks
    visible_keys = jnp.maximum((q_block + 1) * cfg.block_q + cfg.causal_offset, 0)
    return jnp.minimum(ceil_div(visible_keys, cfg.block_k), num_kv_blocks)


def first_causal_q_block(cfg: FlashConfig, kv_block):
    """First query block that can see any key of `kv_block` (0 without causal)."""
    if not cfg.causal:
        return 0
    first_query = jnp.maximum(kv_block * cfg.block_k - cfg.causal_offset, 0)
    return jax.lax.div(first_query, cfg.block_q)


def ceil_div(a, b: int):
    """`ceil(a / b)` for non-negative int32 scalars (truncating division: Mosaic has no integer floor-divide)."""
    return jax.lax.div(a + (b - 1), b)


def gate_epilogue(out, gate):
    """`out * sigmoid(gate)` in float32; `gate` is `[rows, 1]` (headwise) or `[rows, head_dim]`, or None."""
    if gate is None:
        return out
    return out * jax.nn.sigmoid(gate.astype(jnp.float32))


def gate_backward(do, out, gate):
    """`(da, dgate, D)` from the output cotangent `do`, gated output `out` and gate logits (float32 math)."""
    do = do.astype(jnp.float32)
    out = out.astype(jnp.float32)
    delta = jnp.sum(do * out, axis=-1, keepdims=True)
    if gate is None:
        return do, None, delta
    sig = jax.nn.sigmoid(gate.astype(jnp.float32))
    dgate = do * out * (1.0 - sig)
    if gate.shape[-1] == 1:
        dgate = jnp.sum(dgate, axis=-1, keepdims=True)
    return do * sig, dgate, delta


def flash_with_custom_vjp(forward, backward):
    """`flash(cfg, q, k, v, gate, q_seg, k_seg) -> out` with a fused backward.

    `forward(cfg, q, k, v, gate, q_seg, k_seg) -> (out, lse)`; `backward(cfg, q, k, v, gate, q_seg, k_seg, out, lse,
    d_out) -> (dq, dk, dv, dgate)`. The logsumexp is the only extra residual; segment ids get no gradient.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def flash(cfg, q, k, v, gate, q_seg, k_seg):
        return forward(cfg, q, k, v, gate, q_seg, k_seg)[0]

    def flash_fwd(cfg, q, k, v, gate, q_seg, k_seg):
        out, lse = forward(cfg, q, k, v, gate, q_seg, k_seg)
        return out, (q, k, v, gate, q_seg, k_seg, out, lse)

    def flash_bwd(cfg, residuals, d_out):
        return (*backward(cfg, *residuals, d_out), None, None)

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


def split_refs(refs, cfg, n_fixed):
    """Split a kernel's refs into the fixed ones, the optional (gate, q_seg, k_seg) and the rest."""
    fixed, rest = list(refs[:n_fixed]), list(refs[n_fixed:])
    gate = rest.pop(0) if cfg.gate_kind != "none" else None
    q_seg = rest.pop(0) if cfg.has_segments else None
    k_seg = rest.pop(0) if cfg.has_segments else None
    return fixed, gate, q_seg, k_seg, rest


def make_config(
    impl: str,
    q,
    k,
    gate,
    segment_ids,
    *,
    scale,
    causal: bool,
    block_q: int,
    block_k: int,
    minimum: int,
    interpret: bool,
) -> FlashConfig:
    """The static kernel configuration shared by the GPU and TPU kernels: blocks shrunk to the sequences (never
    below `minimum`), the softmax scale (default head_dim^-0.5), GQA groups, segment and gate kinds.

    Raises `KernelUnsupportedError` naming `impl` for a head dim, dtype or block size the compiled kernel does
    not take (interpret mode takes any)."""
    problem = support.flash_problem(impl, q.shape[-1], q.dtype, interpret) or support.block_problem(
        block_q, block_k, minimum, interpret
    )
    if problem is not None:
        raise support.KernelUnsupportedError(f"{impl} flash attention cannot run: {problem}")
    q_len, heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    kv_len = k.shape[1]
    return FlashConfig(
        scale=float(head_dim**-0.5 if scale is None else scale),
        causal=causal,
        q_len=q_len,
        kv_len=kv_len,
        block_q=pick_block(q_len, block_q, minimum),
        block_k=pick_block(kv_len, block_k, minimum),
        groups=heads // k.shape[2],
        has_segments=segment_ids is not None,
        gate_kind=gate_kind(gate),
        interpret=interpret,
    )

"""Fused gated flash attention in Pallas for GPUs (Triton lowering), also run in interpret mode on CPU.

Formulas, masking and the gate epilogue are in `flash_common`'s docstring (FlashAttention-2, Dao 2023; the G1
sigmoid output gate of Qiu et al. 2025). Layout stays `[batch, seq, heads, head_dim]` (no transposes): each
program owns one (batch, head, query block) and loops over key blocks with an online softmax; grouped-query
attention is an index map (`head // groups` selects the kv head). The backward pass is two Pallas kernels:
one per query block (dq and dgate) and one per key block (dk, dv), both recomputing `p` from the saved
logsumexp; per-query-head dk/dv are summed over each kv head's group afterwards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jdistill.kernels import flash_common as fc


def _dot_nt(a, b):
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _triton(cfg, head_dim):
    """Triton launch parameters (this choice also selects the Triton backend over Mosaic GPU)."""
    return pltriton.CompilerParams(num_warps=8 if head_dim * cfg.block_q >= 128 * 128 else 4, num_stages=2)


def _fwd_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref), gate_ref, qs_ref, ks_ref, (o_ref, lse_ref) = fc.split_refs(refs, cfg, 3)
    q_block = pl.program_id(2)
    num_kv_blocks = k_ref.shape[0] // cfg.block_k
    q = q_ref[...]
    q_seg = None if qs_ref is None else qs_ref[...][:, None]
    shape = (cfg.block_q, cfg.block_k)

    def body(j, carry):
        m_prev, l_prev, acc = carry
        keys = pl.ds(j * cfg.block_k, cfg.block_k)
        k_seg = None if ks_ref is None else ks_ref[keys][None, :]
        mask = fc.block_mask(cfg, q_block * cfg.block_q, j * cfg.block_k, shape, q_seg, k_seg)
        s = jnp.where(mask, _dot_nt(q, k_ref[keys, :]) * cfg.scale, fc.NEG_INF)
        m_new = jnp.maximum(m_prev, s.max(axis=1))
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        v = v_ref[keys, :]
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
        return m_new, l_prev * alpha + p.sum(axis=1), acc

    init = (
        jnp.full((cfg.block_q,), fc.NEG_INF, jnp.float32),
        jnp.zeros((cfg.block_q,), jnp.float32),
        jnp.zeros((cfg.block_q, q.shape[-1]), jnp.float32),
    )
    upper = fc.causal_kv_blocks(cfg, q_block, num_kv_blocks)
    m, l, acc = jax.lax.fori_loop(0, upper, body, init)
    seen = l > 0
    out = jnp.where(seen[:, None], acc / jnp.where(seen, l, 1.0)[:, None], 0.0)
    out = fc.gate_epilogue(out, None if gate_ref is None else gate_ref[...])
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), fc.NEG_INF)


def _specs(cfg, t_pad, s_pad, head_dim, per_query_block: bool):
    """BlockSpecs for (q-like row blocks, whole-sequence k/v, gate, segments, lse) in one kernel's grid.

    `per_query_block`: the grid's last axis walks query blocks (forward, dq) or key blocks (dk/dv).
    """
    g = cfg.groups
    if per_query_block:
        rows = lambda width: pl.BlockSpec((None, cfg.block_q, None, width), lambda b, h, i: (b, i, h, 0))
        whole_kv = pl.BlockSpec((None, s_pad, None, head_dim), lambda b, h, i: (b, 0, h // g, 0))
        lse = pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))
        q_seg = pl.BlockSpec((None, cfg.block_q), lambda b, h, i: (b, i))
        k_seg = pl.BlockSpec((None, s_pad), lambda b, h, i: (b, 0))
        return rows, whole_kv, lse, q_seg, k_seg
    rows = lambda width: pl.BlockSpec((None, t_pad, None, width), lambda b, h, j: (b, 0, h, 0))
    kv_block = pl.BlockSpec((None, cfg.block_k, None, head_dim), lambda b, h, j: (b, j, h // g, 0))
    lse = pl.BlockSpec((None, None, t_pad), lambda b, h, j: (b, h, 0))
    q_seg = pl.BlockSpec((None, t_pad), lambda b, h, j: (b, 0))
    k_seg = pl.BlockSpec((None, cfg.block_k), lambda b, h, j: (b, j))
    return rows, kv_block, lse, q_seg, k_seg


def _optional_inputs(cfg, gate, q_seg, k_seg, gate_spec, q_seg_spec, k_seg_spec):
    args, specs = [], []
    if cfg.gate_kind != "none":
        args.append(gate)
        specs.append(gate_spec)
    if cfg.has_segments:
        args += [q_seg, k_seg]
        specs += [q_seg_spec, k_seg_spec]
    return args, specs


def _forward(cfg, q, k, v, gate, q_seg, k_seg):
    batch, t_pad, heads, head_dim = q.shape
    s_pad = k.shape[1]
    gate_dim = 1 if gate is None else gate.shape[-1]
    rows, whole_kv, lse_spec, qs_spec, ks_spec = _specs(cfg, t_pad, s_pad, head_dim, True)
    extra, extra_specs = _optional_inputs(cfg, gate, q_seg, k_seg, rows(gate_dim), qs_spec, ks_spec)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(batch, heads, t_pad // cfg.block_q),
        in_specs=[rows(head_dim), whole_kv, whole_kv, *extra_specs],
        out_specs=[rows(head_dim), lse_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, t_pad), jnp.float32)],
        interpret=cfg.interpret,
        compiler_params=_triton(cfg, head_dim),
        name="gated_flash_fwd",
    )(q, k, v, *extra)


def _dq_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref), gate_ref, qs_ref, ks_ref, outs = fc.split_refs(refs, cfg, 6)
    dq_ref, dgate_ref = outs[0], (outs[1] if len(outs) > 1 else None)
    q_block = pl.program_id(2)
    q = q_ref[...]
    da, dgate, delta = fc.gate_backward(do_ref[...], o_ref[...], None if gate_ref is None else gate_ref[...])
    lse = lse_ref[...][:, None]
    q_seg = None if qs_ref is None else qs_ref[...][:, None]
    shape = (cfg.block_q, cfg.block_k)

    def body(j, dq):
        keys = pl.ds(j * cfg.block_k, cfg.block_k)
        k, v = k_ref[keys, :], v_ref[keys, :]
        k_seg = None if ks_ref is None else ks_ref[keys][None, :]
        mask = fc.block_mask(cfg, q_block * cfg.block_q, j * cfg.block_k, shape, q_seg, k_seg)
        p = jnp.where(mask, jnp.exp(_dot_nt(q, k) * cfg.scale - lse), 0.0)
        ds = p * (_dot_nt(da.astype(v.dtype), v) - delta)
        return dq + _dot(ds.astype(k.dtype), k)

    upper = fc.causal_kv_blocks(cfg, q_block, k_ref.shape[0] // cfg.block_k)
    dq = jax.lax.fori_loop(0, upper, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)
    if dgate_ref is not None:
        dgate_ref[...] = dgate.astype(dgate_ref.dtype)


def _dkdv_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref), gate_ref, qs_ref, ks_ref, (dk_ref, dv_ref) = fc.split_refs(
        refs, cfg, 6
    )
    kv_block = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    k_seg = None if ks_ref is None else ks_ref[...][None, :]
    shape = (cfg.block_q, cfg.block_k)

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(i * cfg.block_q, cfg.block_q)
        q = q_ref[rows, :]
        gate = None if gate_ref is None else gate_ref[rows, :]
        da, _, delta = fc.gate_backward(do_ref[rows, :], o_ref[rows, :], gate)
        q_seg = None if qs_ref is None else qs_ref[rows][:, None]
        mask = fc.block_mask(cfg, i * cfg.block_q, kv_block * cfg.block_k, shape, q_seg, k_seg)
        p = jnp.where(mask, jnp.exp(_dot_nt(q, k) * cfg.scale - lse_ref[rows][:, None]), 0.0)
        dv = dv + _dot(p.T.astype(v.dtype), da.astype(v.dtype))
        ds = p * (_dot_nt(da.astype(v.dtype), v) - delta)
        return dk + _dot(ds.T.astype(q.dtype), q), dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    lower = fc.first_causal_q_block(cfg, kv_block)
    dk, dv = jax.lax.fori_loop(lower, q_ref.shape[0] // cfg.block_q, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward_calls(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out):
    batch, t_pad, heads, head_dim = q.shape
    s_pad, kv_heads = k.shape[1], k.shape[2]
    gate_dim = 1 if gate is None else gate.shape[-1]
    rows, whole_kv, lse_spec, qs_spec, ks_spec = _specs(cfg, t_pad, s_pad, head_dim, True)
    extra, extra_specs = _optional_inputs(cfg, gate, q_seg, k_seg, rows(gate_dim), qs_spec, ks_spec)
    dq_shapes = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    dq_specs = [rows(head_dim)]
    if gate is not None:
        dq_shapes.append(jax.ShapeDtypeStruct(gate.shape, gate.dtype))
        dq_specs.append(rows(gate_dim))
    dq_out = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(batch, heads, t_pad // cfg.block_q),
        in_specs=[rows(head_dim), whole_kv, whole_kv, rows(head_dim), rows(head_dim), lse_spec, *extra_specs],
        out_specs=dq_specs,
        out_shape=dq_shapes,
        interpret=cfg.interpret,
        name="gated_flash_bwd_dq",
        compiler_params=_triton(cfg, head_dim),
    )(q, k, v, out, d_out, lse, *extra)

    rows, kv_spec, lse_spec, qs_spec, ks_spec = _specs(cfg, t_pad, s_pad, head_dim, False)
    extra, extra_specs = _optional_inputs(cfg, gate, q_seg, k_seg, rows(gate_dim), qs_spec, ks_spec)
    per_head = pl.BlockSpec((None, cfg.block_k, None, head_dim), lambda b, h, j: (b, j, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg),
        grid=(batch, heads, s_pad // cfg.block_k),
        in_specs=[rows(head_dim), kv_spec, kv_spec, rows(head_dim), rows(head_dim), lse_spec, *extra_specs],
        out_specs=[per_head, per_head],
        out_shape=[jax.ShapeDtypeStruct((batch, s_pad, heads, head_dim), jnp.float32)] * 2,
        interpret=cfg.interpret,
        name="gated_flash_bwd_dkdv",
        compiler_params=_triton(cfg, head_dim),
    )(q, k, v, out, d_out, lse, *extra)
    group_sum = lambda x: x.reshape(batch, s_pad, kv_heads, cfg.groups, head_dim).sum(3)
    dgate = dq_out[1] if gate is not None else None
    return dq_out[0], group_sum(dk).astype(k.dtype), group_sum(dv).astype(v.dtype), dgate


_flash = fc.flash_with_custom_vjp(_forward, _backward_calls)


def gated_flash_attention(
    q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, interpret=False, block_q=None, block_k=None
):
    """Gated flash attention (Pallas GPU kernel, or its interpret-mode run when `interpret=True`).

    Same contract as `jdistill.kernels.gated_attention_reference`; `T` and `S` are padded to block multiples
    internally. Default blocks (query x key) are 128 x 64, one tier smaller (64 x 32) for head dims above 128
    and one more for float32 inputs (down to 32 x 16), so the tiles fit in shared memory; they shrink (powers of
    two, >= 16 for the tensor-core dots) for short sequences.
    """
    fc.check_shapes(q, k, v, gate, segment_ids)
    _batch, q_len, _heads, head_dim = q.shape
    kv_len = k.shape[1]
    # Shared memory per program grows with the tile's bytes: float32 tiles (TF32 dots) take a size tier smaller
    # than bfloat16 ones (measured on an H200: f32 at 128 x 64 asks 262 KiB for head dim 64, 427 KiB for 128;
    # 227 KiB are available).
    tier = (head_dim > 128) + (jnp.dtype(q.dtype).itemsize > 2)
    block_q = block_q or (128, 64, 32)[tier]
    block_k = block_k or (64, 32, 16)[tier]
    cfg = fc.make_config(
        "pallas_gpu",
        q,
        k,
        gate,
        segment_ids,
        scale=scale,
        causal=causal,
        block_q=block_q,
        block_k=block_k,
        minimum=1 if interpret else 16,
        interpret=interpret,
    )
    block_q, block_k = cfg.block_q, cfg.block_k
    t_pad, s_pad = fc.round_up(q_len, block_q), fc.round_up(kv_len, block_k)
    if gate is not None and gate.ndim == 3:
        gate = gate[..., None]
    q_seg = k_seg = None
    if segment_ids is not None:
        segment_ids = segment_ids.astype(jnp.int32)
        q_seg, k_seg = fc.pad_axis(segment_ids, 1, t_pad), fc.pad_axis(segment_ids, 1, s_pad)
    out = _flash(
        cfg,
        fc.pad_axis(q, 1, t_pad),
        fc.pad_axis(k, 1, s_pad),
        fc.pad_axis(v, 1, s_pad),
        fc.pad_axis(gate, 1, t_pad),
        q_seg,
        k_seg,
    )
    return out[:, :q_len]

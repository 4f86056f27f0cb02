"""Fused gated flash attention in Pallas Mosaic TPU (forward and backward); interpret mode runs it on CPU.

Formulas, masking and the gate epilogue are in `flash_common`'s docstring (FlashAttention-2, Dao 2023; the G1
sigmoid output gate of Qiu et al. 2025). TPU layout: the wrapper moves heads in front (`[batch, heads, seq,
head_dim]`) so every block's last two dims are (rows, head_dim), as Mosaic tiles them. The key axis is the
innermost ("arbitrary") grid axis; running max, sum and the accumulator live in VMEM scratch across it.
Causally dead blocks are skipped with `pl.when`, and their index maps are clamped so no DMA fetches them.
The backward pass is two kernels, dq (+ dgate) over (query block, key block) and dk/dv over (key block, query
block); per-query-head dk/dv are summed over each kv head's group afterwards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jdistill.kernels import flash_common as fc

_TRANS_A = (((0,), (0,)), ((), ()))
_TRANS_B = (((1,), (1,)), ((), ()))
_PLAIN = (((1,), (0,)), ((), ()))


def _dot(a, b, dims=_PLAIN):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _load(ref):
    return None if ref is None else ref[...]


def _mask(cfg, q_block, kv_block, qs_ref, ks_ref):
    return fc.block_mask(
        cfg, q_block * cfg.block_q, kv_block * cfg.block_k, (cfg.block_q, cfg.block_k), _load(qs_ref), _load(ks_ref)
    )


def _fwd_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref), gate_ref, qs_ref, ks_ref, rest = fc.split_refs(refs, cfg, 3)
    o_ref, lse_ref, m_scr, l_scr, acc_scr = rest
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, fc.NEG_INF, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(j < fc.causal_kv_blocks(cfg, i, pl.num_programs(3)))
    def _step():
        mask = _mask(cfg, i, j, qs_ref, ks_ref)
        s = jnp.where(mask, _dot(q_ref[...], k_ref[...], _TRANS_B) * cfg.scale, fc.NEG_INF)
        m_prev = m_scr[...]
        m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        l_scr[...] = l_scr[...] * alpha + p.sum(axis=1, keepdims=True)
        acc_scr[...] = acc_scr[...] * alpha + _dot(p.astype(v_ref.dtype), v_ref[...])
        m_scr[...] = m_new

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l = l_scr[...]
        seen = l > 0
        out = jnp.where(seen, acc_scr[...] / jnp.where(seen, l, 1.0), 0.0)
        o_ref[...] = fc.gate_epilogue(out, _load(gate_ref)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(seen, m_scr[...] + jnp.log(jnp.where(seen, l, 1.0)), fc.NEG_INF)


def _kv_index(cfg):
    """Key-block index map for the forward/dq grids: causally dead blocks reuse the last live one (no DMA)."""

    def index(b, h, i, j):
        if cfg.causal:
            visible = fc.ceil_div(jnp.maximum((i + 1) * cfg.block_q + cfg.causal_offset, 0), cfg.block_k)
            j = jnp.minimum(j, jnp.maximum(visible - 1, 0))
        return b, jax.lax.div(h, cfg.groups), j, 0

    return index


def _q_index(cfg):
    """Query-block index map for the dk/dv grid (kv block j, query block i): dead blocks reuse the first live."""

    def index(b, h, j, i):
        return b, h, jnp.maximum(i, fc.first_causal_q_block(cfg, j)), 0

    return index


def _specs(cfg, head_dim, q_major: bool):
    """(row spec maker, kv spec, lse spec, q_seg spec, k_seg spec) for a grid ordered (b, h, q, k) if q_major
    else (b, h, k, q)."""
    if q_major:
        q_map = lambda b, h, i, j: (b, h, i, 0)
        kv_map = _kv_index(cfg)
    else:
        q_map = _q_index(cfg)
        kv_map = lambda b, h, j, i: (b, jax.lax.div(h, cfg.groups), j, 0)
    rows = lambda width: pl.BlockSpec((None, None, cfg.block_q, width), q_map)
    kv = pl.BlockSpec((None, None, cfg.block_k, head_dim), kv_map)
    q_seg = pl.BlockSpec((None, cfg.block_q, 1), lambda *g: (q_map(*g)[0], q_map(*g)[2], 0))
    k_seg = pl.BlockSpec((None, 1, cfg.block_k), lambda *g: (kv_map(*g)[0], 0, kv_map(*g)[2]))
    return rows, kv, rows(1), q_seg, k_seg


def _extra(cfg, gate, q_seg, k_seg, specs, gate_dim):
    rows, _, _, qs_spec, ks_spec = specs
    args, in_specs = [], []
    if cfg.gate_kind != "none":
        args.append(gate)
        in_specs.append(rows(gate_dim))
    if cfg.has_segments:
        args += [q_seg, k_seg]
        in_specs += [qs_spec, ks_spec]
    return args, in_specs


def _params(interpret):
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))
    return dict(compiler_params=params, interpret=interpret)


def _forward(cfg, q, k, v, gate, q_seg, k_seg):
    batch, heads, t_pad, head_dim = q.shape
    gate_dim = 1 if gate is None else gate.shape[-1]
    specs = _specs(cfg, head_dim, q_major=True)
    rows, kv, lse_spec = specs[:3]
    extra, extra_specs = _extra(cfg, gate, q_seg, k_seg, specs, gate_dim)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(batch, heads, t_pad // cfg.block_q, k.shape[2] // cfg.block_k),
        in_specs=[rows(head_dim), kv, kv, *extra_specs],
        out_specs=[rows(head_dim), lse_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, t_pad, 1), jnp.float32)],
        scratch_shapes=[
            pltpu.VMEM((cfg.block_q, 1), jnp.float32),
            pltpu.VMEM((cfg.block_q, 1), jnp.float32),
            pltpu.VMEM((cfg.block_q, head_dim), jnp.float32),
        ],
        name="gated_flash_fwd_tpu",
        **_params(cfg.interpret),
    )(q, k, v, *extra)


def _dq_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref), gate_ref, qs_ref, ks_ref, rest = fc.split_refs(refs, cfg, 6)
    dq_ref, rest = rest[0], rest[1:]
    dgate_ref = rest.pop(0) if gate_ref is not None else None
    dq_scr, da_scr, delta_scr = rest
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        da, dgate, delta = fc.gate_backward(do_ref[...], o_ref[...], _load(gate_ref))
        da_scr[...], delta_scr[...] = da, delta
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
        if dgate_ref is not None:
            dgate_ref[...] = dgate.astype(dgate_ref.dtype)

    @pl.when(j < fc.causal_kv_blocks(cfg, i, pl.num_programs(3)))
    def _step():
        k, v = k_ref[...], v_ref[...]
        mask = _mask(cfg, i, j, qs_ref, ks_ref)
        p = jnp.where(mask, jnp.exp(_dot(q_ref[...], k, _TRANS_B) * cfg.scale - lse_ref[...]), 0.0)
        ds = p * (_dot(da_scr[...].astype(v.dtype), v, _TRANS_B) - delta_scr[...])
        dq_scr[...] += _dot(ds.astype(k.dtype), k)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, cfg: fc.FlashConfig):
    (q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref), gate_ref, qs_ref, ks_ref, rest = fc.split_refs(refs, cfg, 6)
    dk_ref, dv_ref, dk_scr, dv_scr = rest
    j, i = pl.program_id(2), pl.program_id(3)

    @pl.when(i == 0)
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    @pl.when(i >= fc.first_causal_q_block(cfg, j))
    def _step():
        q, k, v = q_ref[...], k_ref[...], v_ref[...]
        da, _, delta = fc.gate_backward(do_ref[...], o_ref[...], _load(gate_ref))
        mask = _mask(cfg, i, j, qs_ref, ks_ref)
        p = jnp.where(mask, jnp.exp(_dot(q, k, _TRANS_B) * cfg.scale - lse_ref[...]), 0.0)
        da = da.astype(v.dtype)
        dv_scr[...] += _dot(p.astype(v.dtype), da, _TRANS_A)
        ds = p * (_dot(da, v, _TRANS_B) - delta)
        dk_scr[...] += _dot(ds.astype(q.dtype), q, _TRANS_A)

    @pl.when(i == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _dq_call(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out):
    batch, heads, t_pad, head_dim = q.shape
    gate_dim = 1 if gate is None else gate.shape[-1]
    specs = _specs(cfg, head_dim, q_major=True)
    rows, kv, lse_spec = specs[:3]
    extra, extra_specs = _extra(cfg, gate, q_seg, k_seg, specs, gate_dim)
    out_shapes, out_specs = [jax.ShapeDtypeStruct(q.shape, q.dtype)], [rows(head_dim)]
    if gate is not None:
        out_shapes.append(jax.ShapeDtypeStruct(gate.shape, gate.dtype))
        out_specs.append(rows(gate_dim))
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(batch, heads, t_pad // cfg.block_q, k.shape[2] // cfg.block_k),
        in_specs=[rows(head_dim), kv, kv, rows(head_dim), rows(head_dim), lse_spec, *extra_specs],
        out_specs=out_specs,
        out_shape=out_shapes,
        scratch_shapes=[
            pltpu.VMEM((cfg.block_q, head_dim), jnp.float32),
            pltpu.VMEM((cfg.block_q, head_dim), jnp.float32),
            pltpu.VMEM((cfg.block_q, 1), jnp.float32),
        ],
        name="gated_flash_bwd_dq_tpu",
        **_params(cfg.interpret),
    )(q, k, v, out, d_out, lse, *extra)


def _dkdv_call(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out):
    batch, heads, t_pad, head_dim = q.shape
    s_pad = k.shape[2]
    gate_dim = 1 if gate is None else gate.shape[-1]
    specs = _specs(cfg, head_dim, q_major=False)
    rows, kv, lse_spec = specs[:3]
    extra, extra_specs = _extra(cfg, gate, q_seg, k_seg, specs, gate_dim)
    per_head = pl.BlockSpec((None, None, cfg.block_k, head_dim), lambda b, h, j, i: (b, h, j, 0))
    return pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg),
        grid=(batch, heads, s_pad // cfg.block_k, t_pad // cfg.block_q),
        in_specs=[rows(head_dim), kv, kv, rows(head_dim), rows(head_dim), lse_spec, *extra_specs],
        out_specs=[per_head, per_head],
        out_shape=[jax.ShapeDtypeStruct((batch, heads, s_pad, head_dim), jnp.float32)] * 2,
        scratch_shapes=[pltpu.VMEM((cfg.block_k, head_dim), jnp.float32)] * 2,
        name="gated_flash_bwd_dkdv_tpu",
        **_params(cfg.interpret),
    )(q, k, v, out, d_out, lse, *extra)


def _backward_calls(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out):
    grads = _dq_call(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out)
    dq, dgate = grads[0], (grads[1] if gate is not None else None)
    dk, dv = _dkdv_call(cfg, q, k, v, gate, q_seg, k_seg, out, lse, d_out)
    batch, kv_heads, s_pad, head_dim = k.shape
    group_sum = lambda x: x.reshape(batch, kv_heads, cfg.groups, s_pad, head_dim).sum(2)
    return dq, group_sum(dk).astype(k.dtype), group_sum(dv).astype(v.dtype), dgate


_flash = fc.flash_with_custom_vjp(_forward, _backward_calls)


def gated_flash_attention_tpu(
    q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, interpret=False, block_q=512, block_k=512
):
    """Gated flash attention as a Pallas Mosaic TPU kernel (`interpret=True`: TPU interpret mode on CPU).

    Same contract as `jdistill.kernels.gated_attention_reference`. Sequences are padded to block multiples
    (blocks shrink to >= 128 for short sequences, as TPU lane tiling needs) and the padding is masked.
    """
    fc.check_shapes(q, k, v, gate, segment_ids)
    _batch, q_len, _heads, _head_dim = q.shape
    kv_len = k.shape[1]
    cfg = fc.make_config(
        "pallas_tpu",
        q,
        k,
        gate,
        segment_ids,
        scale=scale,
        causal=causal,
        block_q=block_q,
        block_k=block_k,
        minimum=1 if interpret else 128,
        interpret=interpret,
    )
    block_q, block_k = cfg.block_q, cfg.block_k
    t_pad, s_pad = fc.round_up(q_len, block_q), fc.round_up(kv_len, block_k)
    heads_first = lambda x, size: None if x is None else fc.pad_axis(x, 1, size).transpose(0, 2, 1, 3)
    if gate is not None and gate.ndim == 3:
        gate = gate[..., None]
    q_seg = k_seg = None
    if segment_ids is not None:
        segment_ids = segment_ids.astype(jnp.int32)
        q_seg = fc.pad_axis(segment_ids, 1, t_pad)[:, :, None]
        k_seg = fc.pad_axis(segment_ids, 1, s_pad)[:, None, :]
    out = _flash(
        cfg, heads_first(q, t_pad), heads_first(k, s_pad), heads_first(v, s_pad), heads_first(gate, t_pad), q_seg, k_seg
    )
    return out.transpose(0, 2, 1, 3)[:, :q_len]

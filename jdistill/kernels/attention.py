"""The attention core: `softmax(q k^T * scale + mask) v`, optionally times a sigmoid output gate.

`gated_attention` is the one entry point the layers call. This module holds the XLA reference path and the
dispatch by `impl` to the fused Pallas kernels (`pallas_gpu.py`, `pallas_tpu.py`), which keep the same signature.

Shapes (documented once, here):
    q        [batch, q_len, heads, head_dim]
    k, v     [batch, kv_len, kv_heads, head_dim]     heads % kv_heads == 0 (grouped-query attention)
    gate     pre-sigmoid logits, [batch, q_len, heads] (headwise) or [batch, q_len, heads, head_dim]
             (elementwise), or None (no gate)
    segment_ids  [batch, q_len] int (packed sequences; requires q_len == kv_len), or None
    returns  [batch, q_len, heads, head_dim]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -1e30


def attention_mask(q_len: int, kv_len: int, *, causal: bool, segment_ids=None, window: int | None = None):
    """Boolean mask `[batch or 1, 1, q_len, kv_len]`, True where a query may attend to a key.

    Causal masking aligns the last query with the last key (so decoding with a cache of length kv_len > q_len
    sees every earlier key). A sliding `window` keeps the `window` nearest keys: k in (q - window, q] when causal,
    |q - k| < window otherwise.
    """
    mask = jnp.ones((1, 1, q_len, kv_len), dtype=bool)
    q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    k_pos = jnp.arange(kv_len)[None, :]
    if causal:
        mask = mask & (k_pos <= q_pos)[None, None]
    if window is not None:
        mask = mask & (jnp.abs(q_pos - k_pos) < window)[None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask & same[:, None]
    return mask


def gated_attention_reference(q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, window=None):
    """XLA reference: `sigmoid(gate) * softmax(q k^T * scale + mask) v`, softmax in float32.

    A query row whose keys are all masked returns zeros (not NaN).
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    scale = head_dim**-0.5 if scale is None else scale
    groups = heads // kv_heads
    q_grouped = q.reshape(batch, q_len, kv_heads, groups, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k, preferred_element_type=jnp.float32) * scale
    mask = attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids, window=window)[:, :, None]
    scores = jnp.where(mask, scores, _NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights.astype(v.dtype), v).reshape(batch, q_len, heads, head_dim)
    if gate is not None:
        if gate.ndim == 3:
            gate = gate[..., None]
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return out


_KERNEL_HEAD_DIMS = (64, 128, 256)


def _pallas_gpu(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_gpu import gated_flash_attention

    if q.shape[-1] not in _KERNEL_HEAD_DIMS:
        return gated_attention_reference(q, k, v, gate, **kwargs)
    return gated_flash_attention(q, k, v, gate, **kwargs)


def _interpret(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_gpu import gated_flash_attention

    return gated_flash_attention(q, k, v, gate, interpret=True, **kwargs)


def _pallas_tpu(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_tpu import gated_flash_attention_tpu

    if q.shape[-1] not in _KERNEL_HEAD_DIMS:
        return gated_attention_reference(q, k, v, gate, **kwargs)
    return gated_flash_attention_tpu(q, k, v, gate, **kwargs)


def _cudnn(q, k, v, gate, **kwargs):
    from jdistill.kernels.cudnn import gated_attention_cudnn

    return gated_attention_cudnn(q, k, v, gate, **kwargs)


_IMPLS = {"xla": gated_attention_reference, "pallas_gpu": _pallas_gpu, "pallas_tpu": _pallas_tpu,
          "interpret": _interpret, "cudnn": _cudnn}


def _auto_impl() -> str:
    """pallas_tpu on TPU, pallas_gpu on GPU, the XLA reference elsewhere (CPU)."""
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(jax.default_backend(), "xla")


def gated_attention(q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, window=None, impl="auto"):
    """Gated scaled-dot-product attention (Qiu et al. 2025, "Gated Attention for LLMs", the G1 gate).

    `out = sigmoid(gate) * softmax(q k^T * scale + mask) v`; see the module docstring for shapes.
    `impl`:
      - "xla": the reference above (autodiff through XLA).
      - "pallas_gpu": the fused Pallas flash kernel with the gate in its epilogue and a Pallas backward
        (`jdistill.kernels.pallas_gpu`); head dims other than 64/128/256 go through the reference.
      - "pallas_tpu": the same kernel in Pallas Mosaic TPU (`jdistill.kernels.pallas_tpu`); head dims other
        than 64/128/256 go through the reference.
      - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` and a separate gate (GPU only).
      - "interpret": the Pallas GPU kernel in interpret mode (any head dim; for CPU tests).
      - "auto": pallas_tpu on TPU, pallas_gpu on GPU, xla on CPU.
    `window`: sliding-window attention (see `attention_mask`); the fused kernels do not implement it yet, so a
    window runs the XLA reference whatever `impl` says.
    """
    if impl == "auto":
        impl = _auto_impl()
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {sorted(_IMPLS) + ['auto']}, got {impl!r}")
    if window is not None:
        return gated_attention_reference(q, k, v, gate, causal=causal, segment_ids=segment_ids, scale=scale,
                                         window=window)
    return _IMPLS[impl](q, k, v, gate, causal=causal, segment_ids=segment_ids, scale=scale)

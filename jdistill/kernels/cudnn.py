"""The cuDNN attention path: `jax.nn.dot_product_attention(implementation="cudnn")` followed by a separate
sigmoid gate (Qiu et al. 2025's G1 gate) — the unfused baseline the fused Pallas kernels are measured against.

Causal masking aligns the last query with the last key (the repository's convention). `jax.nn`'s `is_causal`
aligns the first query with the first key, so it is used only when `q_len == kv_len`; otherwise (and with
segment ids) an explicit boolean mask is passed. Query rows that see no key (causal with `q_len > kv_len`)
are set to zero, as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdistill.kernels.attention import attention_mask


def gated_attention_cudnn(q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, implementation="cudnn"):
    """`sigmoid(gate) * dot_product_attention(q, k, v)` with `jax.nn`'s cuDNN kernel (GPU only).

    `implementation` is passed to `jax.nn.dot_product_attention` ("xla" runs the same path on CPU in tests).
    """
    q_len, kv_len = q.shape[1], k.shape[1]
    is_causal = causal and q_len == kv_len and segment_ids is None
    mask = None
    if not is_causal and (causal or segment_ids is not None):
        mask = attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids)
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=is_causal, implementation=implementation
    )
    if causal and q_len > kv_len:
        out = out.at[:, : q_len - kv_len].set(0)
    if gate is not None:
        if gate.ndim == 3:
            gate = gate[..., None]
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return out

"""Attention-sink statistics (Qiu et al. 2025; Xiao et al. 2024, "Efficient Streaming Language Models with
Attention Sinks"): how much attention mass lands on the first token."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdistill.kernels import attention_mask


def first_token_attention_share(q, k, *, causal: bool, segment_ids=None, scale=None):
    """Mean over batch, heads and queries (from the second on) of softmax(q k^T * scale + mask)[..., 0].

    q `[batch, q_len, heads, head_dim]`, k `[batch, kv_len, kv_heads, head_dim]`. The first query is left out:
    under a causal mask it can only attend to the first token, which says nothing about sinks.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    q_grouped = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k, preferred_element_type=jnp.float32) * scale
    mask = attention_mask(q_len, k.shape[1], causal=causal, segment_ids=segment_ids)[:, :, None]
    weights = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    return jnp.mean(weights[..., 1:, 0]) if q_len > 1 else jnp.mean(weights[..., 0])

"""Key/value caches for incremental decoding, and attention over a cache.

A cache holds `keys, values [batch, max_len, kv_heads, head_dim]`. Rows may sit at different positions
(prompts of different lengths, right-padded): new keys are written at each row's own positions, and a query at
position p attends to the cached keys at positions <= p of its row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    keys: jax.Array
    values: jax.Array

    @classmethod
    def zeros(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
        shape = (batch, max_len, kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def write(self, keys, values, positions) -> KVCache:
        """Store `keys, values [batch, seq, kv_heads, head_dim]` at `positions [batch, seq]`."""
        rows = jnp.arange(keys.shape[0])[:, None]
        return KVCache(
            self.keys.at[rows, positions].set(keys.astype(self.keys.dtype)),
            self.values.at[rows, positions].set(values.astype(self.values.dtype)),
        )


def cached_attention(q, cache: KVCache, gate, positions, window: int | None = None):
    """`sigmoid(gate) * softmax(q k^T / sqrt(d) + mask) v` over the cache, mask: key position <= query position
    (and > query position - window with a sliding window).

    q `[batch, seq, heads, head_dim]`, positions `[batch, seq]`, gate as in `jdistill.kernels.gated_attention`.
    """
    batch, seq, heads, head_dim = q.shape
    kv_heads = cache.keys.shape[2]
    q_grouped = q.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, cache.keys, preferred_element_type=jnp.float32)
    scores = scores * head_dim**-0.5
    key_positions = jnp.arange(cache.keys.shape[1])[None, None, :]
    allowed = key_positions <= positions[:, :, None]  # [batch, seq, max_len]
    if window is not None:
        allowed = allowed & (key_positions > positions[:, :, None] - window)
    scores = jnp.where(allowed[:, None, None], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(cache.values.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, cache.values).reshape(batch, seq, heads, head_dim)
    if gate is not None:
        gate = gate[..., None] if gate.ndim == 3 else gate
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return out

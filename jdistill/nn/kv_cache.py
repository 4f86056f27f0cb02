"""Key/value caches for incremental decoding, and attention over a cache.

A cache holds `keys [batch * kv_heads, max_len, head_dim]`, `values [batch * kv_heads, head_dim, max_len]` (row
b's heads at `b * kv_heads + h`) and `offset [batch]`. These are the layouts the attention's two dots read with
the contracted axis minor in both operands (`q k^T` contracts head_dim, `p v` contracts the slots), so no step
transposes a cache: with values stored `[.., max_len, head_dim]` XLA:CPU transposed every value cache for every
block call. The batch and head axes are merged because XLA drops a size-1 batch axis from the attention dots:
with a separate batch axis the single-row decode loop read the cache through a reshape, and XLA then duplicated
the in-place cache write for that reader and the loop carry, copying every key cache 4 times per step (26 % of
plain greedy decoding's time). `tests/nn/test_kv_cache.py` and `tests/models/test_speculative.py` count the
cache-sized copies in the compiled decoding loops. A token at RoPE position p
of row b lives in cache slot `p + offset[b]`; slots below `offset[b]` are that row's left padding and are never
attended. So rows may be right-padded (offset 0, each row at its own positions: prompts of different lengths
continue from their own length) or left-padded (offset = the row's number of pad tokens, every row writing the
same slot at each step while its positions start at 0 on its first real token). A query at position p attends
to the cached keys of its row at slots in [offset, p + offset] (and within the sliding window, if any).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    keys: jax.Array
    values: jax.Array
    offset: jax.Array  # int32 [batch]: the row's first real slot (its number of left-padding tokens)

    @classmethod
    def zeros(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
        keys, values = (batch * kv_heads, max_len, head_dim), (batch * kv_heads, head_dim, max_len)
        return cls(jnp.zeros(keys, dtype), jnp.zeros(values, dtype), jnp.zeros((batch,), jnp.int32))

    def slots(self, positions):
        """Cache slots `[batch, seq]` of the tokens at RoPE `positions [batch, seq]`."""
        return positions + self.offset[:, None]

    def write(self, keys, values, positions) -> KVCache:
        """Store `keys, values [batch, seq, kv_heads, head_dim]` of the tokens at `positions [batch, seq]`. One row:
        an in-place `dynamic_update_slice` at its first slot (positions consecutive, slots in the cache; a scatter
        costs more copies in the compiled decode loop); several rows: a scatter `cache[b, :, slots[b, s]] = new[b, s]`
        (one slice per row would unroll into the program); values go along the slot axis of their layout."""
        slots = self.slots(positions)

        def put(flat, new, transposed):
            batch, _, heads, _ = new.shape
            new = new.astype(flat.dtype)
            rows = jnp.arange(batch)[:, None]
            if transposed:
                if batch == 1:
                    return jax.lax.dynamic_update_slice(flat, jnp.transpose(new[0], (1, 2, 0)), (0, 0, slots[0, 0]))
                cache = flat.reshape(batch, heads, *flat.shape[1:])
                return cache.at[rows, :, :, slots].set(new).reshape(flat.shape)
            if batch == 1:
                return jax.lax.dynamic_update_slice(flat, jnp.swapaxes(new[0], 0, 1), (0, slots[0, 0], 0))
            cache = flat.reshape(batch, heads, *flat.shape[1:])
            return cache.at[rows, :, slots].set(new).reshape(flat.shape)

        return dataclasses.replace(self, keys=put(self.keys, keys, False), values=put(self.values, values, True))


def with_offsets(caches, offsets):
    """`caches` (a model's per-layer decoding states) with every KV cache's `offset` set to `offsets [batch]`;
    recurrent states (Gated DeltaNet, ReGLA) are returned unchanged."""
    offsets = jnp.asarray(offsets, jnp.int32)
    return tuple(
        dataclasses.replace(cache, offset=offsets) if isinstance(cache, KVCache) else cache for cache in caches
    )


def cached_attention(q, cache: KVCache, gate, positions, window: int | None = None, key_valid=None):
    """`sigmoid(gate) * softmax(q k^T / sqrt(d) + mask) v` over the cache, mask: key slot in
    [offset, query slot] (and > query slot - window with a sliding window; and `key_valid [batch, max_len]`
    True there, when given: slots of tokens that skipped this layer are masked, `jdistill.models.middle_skip`).

    q `[batch, seq, heads, head_dim]`, positions `[batch, seq]`, gate as in `jdistill.kernels.gated_attention`.
    """
    batch, seq, heads, head_dim = q.shape
    kv_heads = cache.keys.shape[0] // batch
    groups = heads // kv_heads
    # [batch * kv_heads, groups * seq, head_dim]: both dots contract the minor axis of both operands, and the
    # scores come out with the key axis minor (softmax's axis)
    q_flat = q.reshape(batch, seq, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    q_flat = q_flat.reshape(batch * kv_heads, groups * seq, head_dim)
    batched = ((0,), (0,))
    scores = jax.lax.dot_general(q_flat, cache.keys, (((2,), (2,)), batched), preferred_element_type=jnp.float32)
    max_len = cache.keys.shape[1]
    scores = scores.reshape(batch, kv_heads, groups, seq, max_len) * head_dim**-0.5
    key_slots = jnp.arange(max_len)[None, None, :]
    query_slots = cache.slots(positions)[:, :, None]
    allowed = (key_slots <= query_slots) & (key_slots >= cache.offset[:, None, None])  # [batch, seq, max_len]
    if window is not None:
        allowed = allowed & (key_slots > query_slots - window)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    scores = jnp.where(allowed[:, None, None], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(cache.values.dtype)
    weights = weights.reshape(batch * kv_heads, groups * seq, max_len)
    out = jax.lax.dot_general(weights, cache.values, (((2,), (2,)), batched))  # [batch * kv_heads, groups * seq, d]
    out = out.reshape(batch, kv_heads, groups, seq, head_dim).transpose(0, 3, 1, 2, 4)
    out = out.reshape(batch, seq, heads, head_dim)
    if gate is not None:
        gate = gate[..., None] if gate.ndim == 3 else gate
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return out

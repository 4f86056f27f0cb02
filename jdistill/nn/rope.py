"""Rotary position embeddings (Su et al. 2021, RoFormer), half-split layout as in Llama/Qwen.

Partial rotary (as in Qwen3-Next / GPT-NeoX): only the first `rotary_dim` channels of each head rotate, with
frequencies computed over `rotary_dim`; the rest pass through unchanged.

With `positions=None` (every row at 0..seq-1, the training case) the cos/sin tables are computed once at trace
time and enter the program as constants: XLA would otherwise recompute the transcendental functions inside every
fusion that consumes them (the q and k rotations, forward and backward, in every layer).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def rope_frequencies(rotary_dim: int, theta: float):
    """Inverse frequencies `[rotary_dim // 2]`: theta^(-2i / rotary_dim)."""
    return 1.0 / theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)


def rope_tables(seq: int, rotary_dim: int, theta: float):
    """(cos, sin) `[1, seq, 1, rotary_dim // 2]` float32 numpy tables for positions 0..seq-1."""
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim))
    angles = np.arange(seq, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)
    return np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]


def apply_rope(x, positions, *, theta: float, rotary_dim: int | None = None):
    """Rotate `x [batch, seq, heads, head_dim]` by integer `positions [batch, seq]` (None: 0..seq-1 in every row)."""
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    if rotary_dim == 0:
        return x
    if positions is None:
        cos, sin = rope_tables(x.shape[1], rotary_dim, theta)
    else:
        angles = positions[..., None].astype(jnp.float32) * rope_frequencies(rotary_dim, theta)
        cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    rotary, passthrough = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    x1, x2 = jnp.split(rotary, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    return jnp.concatenate([rotated, passthrough], axis=-1) if passthrough.shape[-1] else rotated

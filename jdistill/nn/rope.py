"""Rotary position embeddings (Su et al. 2021, RoFormer), half-split layout as in Llama/Qwen."""

from __future__ import annotations

import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float):
    """Inverse frequencies `[head_dim // 2]`."""
    return 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x, positions, *, theta: float):
    """Rotate `x [batch, seq, heads, head_dim]` by integer `positions [batch, seq]`."""
    head_dim = x.shape[-1]
    angles = positions[..., None].astype(jnp.float32) * rope_frequencies(head_dim, theta)
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)

"""Rotary position embeddings (Su et al. 2021, RoFormer), half-split layout as in Llama/Qwen.

Partial rotary (as in Qwen3-Next / GPT-NeoX): only the first `rotary_dim` channels of each head rotate, with
frequencies computed over `rotary_dim`; the rest pass through unchanged.

With `positions=None` (every row at 0..seq-1, the training case) the cos/sin tables are computed once at trace
time and enter the program as constants: XLA would otherwise recompute the transcendental functions inside every
fusion that consumes them (the q and k rotations, forward and backward, in every layer).

Llama 3 frequency scaling (`scaling = (factor, low_freq_factor, high_freq_factor, original_max_position)`, the
`rope_scaling: {rope_type: llama3}` of Llama 3.1 / 3.2 checkpoints; Meta's Llama 3.1 release, as transformers'
`_compute_llama3_parameters`): with f_i = theta^(-2i / rotary_dim), its wavelength w_i = 2 pi / f_i and L the
original context,

    f_i' = f_i                                   if w_i < L / high_freq_factor    (high frequencies kept)
    f_i' = f_i / factor                          if w_i > L / low_freq_factor     (low frequencies slowed)
    f_i' = (1 - s) f_i / factor + s f_i,  s = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor)
                                                 otherwise (a smooth blend).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def llama3_scaled(inv_freq: np.ndarray, scaling: tuple[float, ...]) -> np.ndarray:
    """Inverse frequencies after Llama 3 scaling (module docstring); `scaling` () leaves them unchanged."""
    if not scaling:
        return inv_freq
    factor, low, high, original = (np.float32(value) for value in scaling)
    wavelength = np.float32(2 * np.pi) / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = np.where(wavelength > original / low, inv_freq / factor, blended)
    return np.where(wavelength < original / high, inv_freq, scaled).astype(np.float32)


def rope_frequencies(rotary_dim: int, theta: float, scaling: tuple[float, ...] = ()):
    """Inverse frequencies `[rotary_dim // 2]`: theta^(-2i / rotary_dim), Llama 3-scaled when `scaling` is set."""
    if scaling:
        inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim))
        return jnp.asarray(llama3_scaled(inv_freq.astype(np.float32), scaling))
    return 1.0 / theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)


def rope_tables(seq: int, rotary_dim: int, theta: float, scaling: tuple[float, ...] = ()):
    """(cos, sin) `[1, seq, 1, rotary_dim // 2]` float32 numpy tables for positions 0..seq-1."""
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim))
    inv_freq = llama3_scaled(inv_freq.astype(np.float32), scaling)
    angles = np.arange(seq, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)
    return np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]


def apply_rope(x, positions, *, theta: float, rotary_dim: int | None = None, scaling: tuple[float, ...] = ()):
    """Rotate `x [batch, seq, heads, head_dim]` by integer `positions [batch, seq]` (None: 0..seq-1 in every row);
    `scaling`: Llama 3 frequency scaling (module docstring), () for none."""
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    if rotary_dim == 0:
        return x
    if positions is None:
        cos, sin = rope_tables(x.shape[1], rotary_dim, theta, scaling)
    else:
        angles = positions[..., None].astype(jnp.float32) * rope_frequencies(rotary_dim, theta, scaling)
        cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    rotary, passthrough = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    x1, x2 = jnp.split(rotary, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    return jnp.concatenate([rotated, passthrough], axis=-1) if passthrough.shape[-1] else rotated

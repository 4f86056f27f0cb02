"""Normalisation layers: RMSNorm, its zero-centred form, and the gated RMSNorm of Gated DeltaNet outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.nn.params import param


def rms_normalize(x, eps: float):
    """`x / sqrt(mean(x^2, last axis) + eps)` in float32 (returns float32)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """RMSNorm (Zhang & Sennrich 2019): `x / sqrt(mean(x^2) + eps) * w`, computed in float32.

    `zero_centered=True` (Qwen3-Next) stores w' = w - 1, initialised 0, and multiplies by `(1 + w')`, so weight
    decay pulls the scale towards 1 rather than 0. Either way the parameter is `scale` `[dim]`.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, zero_centered: bool = False):
        self.eps = eps
        self.zero_centered = zero_centered
        init = jnp.zeros if zero_centered else jnp.ones
        self.scale = param(init((dim,), jnp.float32), ("norm",))

    def __call__(self, x):
        scale = self.scale[...].astype(jnp.float32)
        if self.zero_centered:
            scale = 1.0 + scale
        return (rms_normalize(x, self.eps) * scale).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
    """Gated RMSNorm of the Gated DeltaNet output (Yang et al. 2025, "Gated Delta Networks"; Qwen3-Next):
    `rmsnorm(o) * w * silu(z)`, all in float32, cast back to o's dtype; `scale` w `[dim]` initialised 1.

    `o` and the gate `z` are `[..., dim]` (per head in DeltaNet, so dim = head_dim).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), jnp.float32), ("norm",))

    def __call__(self, x, gate):
        normed = rms_normalize(x, self.eps) * self.scale[...].astype(jnp.float32)
        return (normed * jax.nn.silu(gate.astype(jnp.float32))).astype(x.dtype)

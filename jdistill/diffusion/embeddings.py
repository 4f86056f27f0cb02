"""Conditioning embeddings of denoisers: sinusoidal time features, the class table with its null class, and the
guidance-scale input of guidance-distilled students."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.errors import ConfigError
from jdistill.nn.params import dense, embedding

TIME_SCALE = 1000.0  # noise conditionings live in about [-2, 1]; features see 1000 t (as DDPM's integer steps)
MAX_PERIOD = 10000.0


def sinusoidal_embedding(t, dim: int, *, scale: float = TIME_SCALE, max_period: float = MAX_PERIOD):
    """`[batch] -> [batch, dim]`: [cos(scale t f_k), sin(scale t f_k)] with f_k = max_period^(-k / (dim / 2)),
    k < dim / 2 (the Transformer / DDPM positional features; an odd `dim` gets a zero last column)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = scale * jnp.asarray(t, jnp.float32)[..., None] * freqs
    features = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        features = jnp.concatenate([features, jnp.zeros_like(features[..., :1])], axis=-1)
    return features


class ScalarEmbedding(nnx.Module):
    """A scalar per example (noise level, guidance scale) -> `[batch, dim]`: sinusoidal features, then an MLP."""

    def __init__(self, dim: int, *, frequency_dim: int = 64, scale: float = TIME_SCALE, rngs: nnx.Rngs):
        self.frequency_dim = frequency_dim
        self.scale = scale
        self.hidden = dense(frequency_dim, dim, ("embed", "mlp"), rngs=rngs)
        self.out = dense(dim, dim, ("mlp", "embed"), rngs=rngs)

    def __call__(self, value):
        features = sinusoidal_embedding(value, self.frequency_dim, scale=self.scale)
        return self.out(jax.nn.silu(self.hidden(features)))


class ConditionEmbedding(nnx.Module):
    """c = time(t_in) + class(labels) [+ guidance(w)] `[batch, dim]`.

    Classes: a table of `num_classes + 1` rows; row `num_classes` is the null class (labels = None, or the label
    `null_label`), used for the unconditional branch of classifier-free guidance. `num_classes = 0`: an
    unconditional model (no table; labels must be None). `guidance_conditioning`: the guidance scale is an input
    (guidance-distilled students; None means scale 1, no guidance).
    """

    def __init__(self, dim: int, *, num_classes: int = 0, guidance_conditioning: bool = False, rngs: nnx.Rngs):
        if num_classes < 0:
            raise ConfigError(f"num_classes: expected >= 0 (0 = unconditional), got {num_classes}")
        self.num_classes = num_classes
        self.guidance_conditioning = guidance_conditioning
        self.time = ScalarEmbedding(dim, rngs=rngs)
        if num_classes:
            self.classes = embedding(num_classes + 1, dim, ("vocab", "embed"), rngs=rngs)
        if guidance_conditioning:
            self.guidance = ScalarEmbedding(dim, scale=100.0, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, t_in, labels=None, guidance_scale=None):
        batch = t_in.shape[0]
        c = self.time(t_in)
        if self.num_classes:
            if labels is None:
                labels = jnp.full((batch,), self.null_label, jnp.int32)
            c = c + self.classes(jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,)))
        elif labels is not None:
            raise ConfigError("labels given to an unconditional denoiser (num_classes = 0)")
        if self.guidance_conditioning:
            scale = jnp.ones((batch,)) if guidance_scale is None else guidance_scale
            c = c + self.guidance(jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (batch,)))
        elif guidance_scale is not None:
            raise ConfigError("guidance_scale given to a denoiser without guidance conditioning")
        return c

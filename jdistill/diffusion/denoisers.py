"""Denoiser networks: a small DiT over image patches and a residual MLP for low-dimensional data.

Both are called as `model(x, t, labels=None, guidance_scale=None) -> raw` (`jdistill.diffusion.schedules`): `x` is
x_t `[batch, ...]`, `t` the time in the schedule's units (`[batch]` or a scalar), `labels` int `[batch]` (None or
`model.null_label`: the null class of classifier-free guidance), `guidance_scale` `[batch]` or a scalar for
guidance-conditioned students. The module applies `schedule.model_inputs` (EDM's c_in / c_noise) itself and returns
the raw output in the schedule's parameterisation; `schedules.predict` turns it into x0 / eps / velocity.

DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): patchify, learned positions, blocks of
bidirectional gated self-attention (`jdistill.nn.GatedSelfAttention`: the SDPA output gate of the model config)
and the config's MLP, each branch modulated by adaLN-Zero from the condition c = time + class [+ guidance]
(shift, scale and a residual gate per branch, the modulation initialised to 0 so every block starts as the
identity), a final adaLN and a zero-initialised linear unpatchify. Norms are parameter-free RMS norms (the
modulation supplies the scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.embeddings import ConditionEmbedding
from jdistill.diffusion.schedules import Schedule
from jdistill.models.config import ModelConfig
from jdistill.nn import GLUMLP, MLP, GatedSelfAttention
from jdistill.nn.norms import rms_normalize
from jdistill.nn.params import dense, param

ZERO = nnx.initializers.zeros_init()


def patchify(images, patch_size: int):
    """`[batch, H, W, C] -> [batch, (H/p) (W/p), p p C]`, patches in row-major order."""
    batch, height, width, channels = images.shape
    p = patch_size
    patches = images.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(patches, patch_size: int, height: int, width: int, channels: int):
    """The inverse of `patchify`."""
    batch, p = patches.shape[0], patch_size
    grid = patches.reshape(batch, height // p, width // p, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, height, width, channels)


def modulate(x, shift, scale, eps: float = 1e-6):
    """rms_norm(x) (1 + scale) + shift, with `shift`, `scale` `[batch, d]` broadcast over the tokens."""
    return (rms_normalize(x, eps) * (1.0 + scale[:, None]) + shift[:, None]).astype(x.dtype)


class DiTBlock(nnx.Module):
    """x + g1 attn(mod(x; s1, b1)), then x + g2 mlp(mod(x; s2, b2)), (s, b, g) = adaLN-Zero(c)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = config.norm_eps
        self.attention = GatedSelfAttention(config, causal=False, rope=False, rngs=rngs)
        self.mlp: GLUMLP | MLP
        if config.mlp == "glu":
            self.mlp = GLUMLP(config.d_model, config.mlp_dim, config.activation, order=config.glu_order, rngs=rngs)
        else:
            self.mlp = MLP(config.d_model, config.mlp_dim, config.activation, use_bias=config.mlp_bias, rngs=rngs)
        self.modulation = dense(config.d_model, 6 * config.d_model, ("embed", "mlp"), kernel_init=ZERO, rngs=rngs)

    def __call__(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(jax.nn.silu(c)), 6, axis=-1)
        x = x + gate1[:, None] * self.attention(modulate(x, shift1, scale1, self.eps))
        return x + gate2[:, None] * self.mlp(modulate(x, shift2, scale2, self.eps))


class DiT(nnx.Module):
    """A diffusion transformer over `[batch, image_size, image_size, num_channels]` images (sizes, heads, gate and
    MLP from `config`); `num_classes` 0 is unconditional, else a class table with a null class."""

    def __init__(
        self,
        config: ModelConfig,
        schedule: Schedule,
        *,
        num_classes: int | None = None,
        guidance_conditioning: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.schedule = schedule
        d = config.d_model
        patch_dim = config.patch_size**2 * config.num_channels
        self.num_classes = config.num_classes if num_classes is None else num_classes
        self.guidance_conditioning = guidance_conditioning
        self.embed = dense(patch_dim, d, ("patch", "embed"), rngs=rngs)
        self.position = param(0.02 * jax.random.normal(rngs.params(), (config.num_patches, d)), ("position", "embed"))
        self.condition = ConditionEmbedding(
            d, num_classes=self.num_classes, guidance_conditioning=guidance_conditioning, rngs=rngs
        )
        self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_modulation = dense(d, 2 * d, ("embed", "mlp"), kernel_init=ZERO, rngs=rngs)
        self.out = dense(d, patch_dim, ("embed", "patch"), kernel_init=ZERO, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One example's shape `(H, W, C)`."""
        return (self.config.image_size, self.config.image_size, self.config.num_channels)

    def __call__(self, x, t, labels=None, guidance_scale=None):
        cfg = self.config
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        x_in, t_in = self.schedule.model_inputs(x, t)
        c = self.condition(t_in, labels, guidance_scale)
        h = self.embed(patchify(x_in, cfg.patch_size)) + self.position[...]
        for block in self.blocks:
            h = block(h, c)
        shift, scale = jnp.split(self.final_modulation(jax.nn.silu(c)), 2, axis=-1)
        out = self.out(modulate(h, shift, scale, cfg.norm_eps))
        return unpatchify(out, cfg.patch_size, cfg.image_size, cfg.image_size, cfg.num_channels).astype(x.dtype)


class MLPDenoiser(nnx.Module):
    """A residual MLP denoiser for `[batch, data_dim]` data (2-D toy distributions): h = W_in x_in + c; `num_layers`
    blocks h += W2 silu(W1 silu(h) + P c); raw = W_out silu(h) (W_out initialised 0)."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        data_dim: int = 2,
        hidden: int = 128,
        num_layers: int = 3,
        num_classes: int = 0,
        guidance_conditioning: bool = False,
        rngs: nnx.Rngs,
    ):
        self.schedule = schedule
        self.data_dim = data_dim
        self.num_classes = num_classes
        self.guidance_conditioning = guidance_conditioning
        self.condition = ConditionEmbedding(
            hidden, num_classes=num_classes, guidance_conditioning=guidance_conditioning, rngs=rngs
        )
        self.inp = dense(data_dim, hidden, ("patch", "embed"), rngs=rngs)
        self.hidden = nnx.List([dense(hidden, hidden, ("embed", "mlp"), rngs=rngs) for _ in range(num_layers)])
        self.cond = nnx.List([dense(hidden, hidden, ("embed", "mlp"), rngs=rngs) for _ in range(num_layers)])
        self.back = nnx.List([dense(hidden, hidden, ("mlp", "embed"), rngs=rngs) for _ in range(num_layers)])
        self.out = dense(hidden, data_dim, ("embed", "patch"), kernel_init=ZERO, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.data_dim,)

    def __call__(self, x, t, labels=None, guidance_scale=None):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        x_in, t_in = self.schedule.model_inputs(x, t)
        c = self.condition(t_in, labels, guidance_scale)
        h = self.inp(x_in) + c
        for hidden, cond, back in zip(self.hidden, self.cond, self.back, strict=True):
            h = h + back(jax.nn.silu(hidden(jax.nn.silu(h)) + cond(c)))
        return self.out(jax.nn.silu(h)).astype(x.dtype)

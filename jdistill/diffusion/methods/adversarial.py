"""Adversarial terms of the one-step generators: discriminators on a denoiser's own features
(docs/diffusion_generators.md).

- DMD2's GAN term (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis"): a small
  classification head on the *fake score's* features of noised samples x_t = alpha(t) x + sigma(t) eps tells real
  data from generator samples; the head (and the fake score) minimise the non-saturating classifier loss, the
  generator the non-saturating generator loss,

      L_D = mean softplus(-D(x_t^real)) + mean softplus(D(x_t^fake)),      L_G = mean softplus(-D(x_t^fake)).

- LADD (Sauer et al. 2024, "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation"):
  the *frozen teacher's* features at every block, each read by its own head, on noised real and generated samples;
  hinge loss,

      L_D = mean relu(1 - D(x_t^real)) + mean relu(1 + D(x_t^fake)),       L_G = -mean D(x_t^fake).

The features (`denoiser_features`) are the token states after each block of the library's DiT (or the hidden state
after each block of the 2-D MLP denoiser) together with the network's condition embedding c (time + class), which
conditions the heads. A head is D_l(h, c) = mean_tokens w2 . silu(W1 h + P c) (`DiscriminatorHeads`; the logits of
several heads are summed). Shapes: samples `[batch, ...]`, logits `[batch]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from jdistill.diffusion.denoisers import DiT, MLPDenoiser, patchify

GAN_LOSSES = ("nonsaturating", "hinge")


def feature_levels(model) -> int:
    """How many feature levels `denoiser_features` returns (the denoiser's blocks)."""
    return len(model.blocks) if isinstance(model, DiT) else len(model.hidden)


def logit_normal_times(schedule, rng, batch: int, mean: float = 1.0, std: float = 1.0, grid: int = 1000):
    """`[batch]` discriminator times of LADD: u = sigmoid(mean + std n), n ~ N(0, 1), read as the fraction of the way
    from the data end to the noise end of the schedule's `grid`-step sampling grid (a positive `mean` shifts the
    draws toward high noise, as LADD's logit-normal with m = 1)."""
    times = jnp.asarray(schedule.timesteps(grid)[:-1], jnp.float32)  # index 0: t_max
    u = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
    index = jnp.clip(jnp.floor((1.0 - u) * grid).astype(jnp.int32), 0, grid - 1)
    return times[index]


def denoiser_features(model, x: Array, t, labels=None) -> tuple[list[Array], Array]:
    """(features after each block `[batch, tokens, d]` (DiT) or `[batch, hidden]` (MLP), condition c `[batch, d]`) of
    the denoiser `model` at x_t = `x`, time `t` (the same computation as `model(x, t, labels)` up to its output
    layer)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
    x_in, t_in = model.schedule.model_inputs(x, t)
    c = model.condition(t_in, labels, None)
    features = []
    if isinstance(model, DiT):
        h = model.embed(patchify(x_in, model.config.patch_size)) + model.position[...]
        for block in model.blocks:
            h = block(h, c)
            features.append(h)
    elif isinstance(model, MLPDenoiser):
        h = model.inp(x_in) + c
        for hidden, cond, back in zip(model.hidden, model.cond, model.back, strict=True):
            h = h + back(jax.nn.silu(hidden(jax.nn.silu(h)) + cond(c)))
            features.append(h)
    else:
        raise TypeError(f"no features for a denoiser of type {type(model).__name__}")
    return features, c


def feature_width(model) -> int:
    """The width of `denoiser_features`' states (and of c)."""
    return model.config.d_model if isinstance(model, DiT) else model.inp.out_features


class DiscriminatorHeads(nnx.Module):
    """`num_heads` heads, head l reading feature level l: D(h_1..h_L, c) = sum_l mean_tokens w2_l . silu(W1_l h_l +
    P_l c) (a scalar logit per example)."""

    def __init__(self, width: int, num_heads: int = 1, hidden: int = 64, *, rngs: nnx.Rngs):
        self.inp = nnx.List([nnx.Linear(width, hidden, rngs=rngs) for _ in range(num_heads)])
        self.cond = nnx.List([nnx.Linear(width, hidden, use_bias=False, rngs=rngs) for _ in range(num_heads)])
        self.out = nnx.List([nnx.Linear(hidden, 1, rngs=rngs) for _ in range(num_heads)])

    def __call__(self, features: list[Array], c: Array) -> Array:
        if len(features) != len(self.inp):
            raise ValueError(f"{len(self.inp)} heads, got {len(features)} feature levels")
        logits = jnp.zeros(c.shape[:1], jnp.float32)
        for h, inp, cond, out in zip(features, self.inp, self.cond, self.out, strict=True):
            projected = cond(c)
            if h.ndim == 3:  # tokens: the condition broadcast over them
                projected = projected[:, None]
            per_token = out(jax.nn.silu(inp(h) + projected))[..., 0]
            logits = logits + per_token.reshape(per_token.shape[0], -1).mean(axis=-1).astype(jnp.float32)
        return logits


def discriminator_logits(heads: DiscriminatorHeads, model, x_t: Array, t, labels=None, levels: int | None = None):
    """The heads' logits `[batch]` on the denoiser's features at (x_t, t): the last `levels` feature levels (all when
    None; DMD2's head reads the last one)."""
    features, c = denoiser_features(model, x_t, t, labels)
    return heads(features if levels is None else features[-levels:], c)


def discriminator_loss(real_logits: Array, fake_logits: Array, kind: str = "nonsaturating") -> Array:
    """The classifier's loss: softplus(-D_real) + softplus(D_fake) (non-saturating), or relu(1 - D_real) +
    relu(1 + D_fake) (hinge), each a mean over its batch."""
    if kind == "nonsaturating":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    raise ValueError(f"GAN loss must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")


def generator_loss(fake_logits: Array, kind: str = "nonsaturating", weights: Array | None = None) -> Array:
    """The generator's loss: softplus(-D_fake) (non-saturating) or -D_fake (hinge), a mean over the batch (a
    weighted mean sum_i w_i l_i / batch with per-example `weights`)."""
    if kind == "nonsaturating":
        per_example = jax.nn.softplus(-fake_logits)
    elif kind == "hinge":
        per_example = -fake_logits
    else:
        raise ValueError(f"GAN loss must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")
    return jnp.mean(per_example if weights is None else weights * per_example)

"""Score identity distillation (SiD; Zhou et al. 2024, "Score identity Distillation: Exponentially Fast Distillation
of Pretrained Diffusion Models for One-Step Generation"), the generator's loss (docs/diffusion_generators.md).

With x_g = G(z) the generator's sample, x_t = alpha(t) x_g + sigma(t) eps, f_phi the teacher's x0 prediction and
f_psi the fake score's (trained by denoising on sg(x_g), as in DMD), Tweedie's formula and the score identity turn
the model-based Fisher divergence into a loss that is linear in the unknown fake score; SiD fuses it with the
direct estimate of the divergence, weighted by alpha (1.2 in the paper):

    L_theta = mean_i [ (f_phi - f_psi) . ((f_phi - x_g) - alpha (f_phi - f_psi)) ] / mean_j |x_g - f_phi|
            = mean_i [ (1 - alpha) ||f_phi - f_psi||^2 + (f_phi - f_psi) . (f_psi - x_g) ] / mean_j |x_g - f_phi|

(the dot products and norms are means over each sample's numbers; the normaliser, SiD's and DMD's per-example
weight, is held fixed). Gradients reach theta through x_g and through x_t in both score networks, whose own
parameters are not trained by this loss. SiD needs no real data ("data-free"): only noise and the two scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

SID_ALPHA = 1.2


def _per_example_mean(x: Array) -> Array:
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def sid_generator_loss(x_g: Array, x0_real: Array, x0_fake: Array, alpha: float = SID_ALPHA, eps: float = 1e-5):
    """SiD's fused generator loss (module docstring), averaged over the batch; the per-example weight
    1 / max(mean|x_g - x0_real|, eps) is held fixed. At alpha = 1 it is the cross term alone,
    (f_phi - f_psi) . (f_psi - x_g); it is 0 when the fake score equals the teacher's."""
    x_g, x0_real, x0_fake = (jnp.asarray(a, jnp.float32) for a in (x_g, x0_real, x0_fake))
    weight = jax.lax.stop_gradient(jnp.maximum(_per_example_mean(jnp.abs(x_g - x0_real)), eps))
    difference = x0_real - x0_fake
    value = _per_example_mean(difference * ((x0_real - x_g) - alpha * difference))
    return jnp.mean(value / weight)

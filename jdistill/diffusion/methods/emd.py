"""EM distillation (EMD; Xie et al. 2024, "EM Distillation for One-step Diffusion Models"): the E-step's MCMC on the
generator's latents (docs/diffusion_generators.md).

EMD fits a one-step generator x = g_theta(z) by maximum likelihood of the teacher's diffused marginal p_t: an EM loop
whose E-step draws latent-sample pairs from the posterior of the generator's noise given the teacher, and whose
M-step moves the generator toward those pairs. Reparametrised by the generator's noise z and the diffusion noise
eps (x_t = alpha(t) g_theta(z) + sigma(t) eps), the E-step's target is

    log pi(z, eps) = log p_t(x_t) - log q_t(x_t) - ||z||^2 / 2 - ||eps||^2 / 2 + const,

(q_t: the generator's own diffused marginal, whose score is the fake score), so its gradient is

    grad_z   = alpha (dg/dz)^T (s_real - s_fake)(x_t) - z,     grad_eps = sigma (s_real - s_fake)(x_t) - eps,
    s_real - s_fake = alpha (x0_real - x0_fake) / sigma^2   (in x0 terms).

K Langevin steps (z, eps) <- (z, eps) + gamma grad + sqrt(2 gamma) n refine the generator's own draw; *noise
cancellation* subtracts the noise injected into eps over the K steps at the end (it dominates eps's change and only
adds variance to the M-step). The M-step is then DMD's update at the refined pair: the distribution-matching
gradient at x_t = alpha g_theta(z*) + sigma eps*, back-propagated into g_theta(z*). With K = 0 EMD is DMD's (Diff-
Instruct's) update; with K > 0 its samples are pulled toward the teacher's modes before the generator is fitted.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array


def log_target_grad(generator: Callable[[Array], Array], x0_real, x0_fake, alpha: Array, sigma: Array, z, eps):
    """(d/dz, d/deps) of log pi(z, eps) = log p_t(x_t) - log q_t(x_t) - |z|^2 / 2 - |eps|^2 / 2 at x_t = alpha
    generator(z) + sigma eps, the scores from the x0 predictions `x0_real(x_t)`, `x0_fake(x_t)`: s_real - s_fake =
    alpha (x0_real - x0_fake) / sigma^2. `alpha`, `sigma` `[batch]`."""
    x, pullback = jax.vjp(generator, z)
    a, s = (jnp.reshape(v, v.shape + (1,) * (x.ndim - 1)) for v in (alpha, sigma))
    x_t = a * x + s * eps
    score_gap = a / s**2 * (x0_real(x_t) - x0_fake(x_t))
    (grad_z,) = pullback(a * score_gap)
    return grad_z - z, s * score_gap - eps


def langevin(
    grad_log_target: Callable[[tuple[Array, Array]], tuple[Array, Array]],
    z: Array,
    eps: Array,
    steps: int,
    step_size: float,
    rng,
    cancel_noise: bool = True,
) -> tuple[Array, Array]:
    """(z, eps) after `steps` Langevin steps v <- v + step_size grad_log_target(v) + sqrt(2 step_size) n on both;
    with `cancel_noise` the sum of the noise injected into eps is subtracted at the end. `steps` = 0: unchanged."""
    scale = jnp.sqrt(2.0 * step_size)

    def one(carry, key):
        z, eps, injected = carry
        g_z, g_eps = grad_log_target((z, eps))
        z_key, eps_key = jax.random.split(key)
        n_eps = scale * jax.random.normal(eps_key, eps.shape)
        z = z + step_size * g_z + scale * jax.random.normal(z_key, z.shape)
        return (z, eps + step_size * g_eps + n_eps, injected + n_eps), None

    if steps == 0:
        return z, eps
    (z, eps, injected), _ = jax.lax.scan(one, (z, eps, jnp.zeros_like(eps)), jax.random.split(rng, steps))
    return z, (eps - injected if cancel_noise else eps)

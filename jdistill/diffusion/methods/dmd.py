"""Distribution matching distillation: the one- or few-step generator's objectives and its sampling
(docs/diffusion_generators.md).

A generator G maps noise z ~ N(0, I) to a sample: x = G(z) = x0_theta(sigma(t_1) z, t_1), a denoiser (started as the
teacher) evaluated at its first time t_1; with K steps it re-noises its estimate to the next time with fresh noise,
x_{t_{k+1}} = alpha(t_{k+1}) x + sigma(t_{k+1}) eps, and denoises again (`generate`). Two score estimates judge its
samples after forward diffusion x_t = alpha(t) x + sigma(t) eps: the teacher's ("real") x0_real(x_t, t) and a
"fake" score x0_fake(x_t, t) trained by denoising score matching on the generator's own samples, so that it tracks
the generator's distribution.

- DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation"): the gradient of
  KL(p_fake || p_real) w.r.t. x is approximately the difference of the scores, s_fake - s_real, which in x0 terms is
  proportional to x0_real - x0_fake; normalised per example,

      grad_i = (x0_fake - x0_real) / mean_j |x - x0_real|,
      L_DM   = 0.5 mean_i mean_j (x - sg(x - grad))^2,    so that dL_DM / dx = grad / (batch * numbers),

  plus the regression loss L_reg = mean d(G(z_ref), y_ref) on pairs of noise and the teacher's ODE output
  (LPIPS in the paper; here l2 / l1 / pseudo-Huber), weighted by lambda_reg (0.25).
- DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis"): no regression loss;
  the fake score is updated several times per generator update (two time-scale); a K-step generator is trained on
  its own intermediate states (backward simulation, `backward_simulated_input`) rather than noised real images.

- DMD meets RL (Flash-DMD-style reward on generator samples): a reward r(x, y) on the generator's samples is added
  to the distribution-matching loss, L = L_DM - reward_weight mean r; here r = log p(y | x) of the requested class
  under the digits classifier (`class_log_likelihood`), with the distribution-matching term keeping the samples on
  the teacher's distribution (the benchmark checks the reward does not hack FD).

Times t for the losses are drawn as indices of the schedule's `TIME_GRID`-step sampling grid (`grid_times`): DMD
uses [0.02, 0.98] of it, as the paper's [20, 980] of 1000 DDPM steps. Shapes: samples `[batch, ...]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jdistill.diffusion.schedules import Schedule, expand_to

TIME_GRID = 1000


def _mean_abs(x: Array) -> Array:
    """mean_j |x_ij| per example, shaped to broadcast against `x`."""
    per_example = jnp.mean(jnp.abs(x).reshape(x.shape[0], -1), axis=-1)
    return expand_to(per_example, x)


def distribution_matching_gradient(x: Array, x0_real: Array, x0_fake: Array, eps: float = 1e-5) -> Array:
    """DMD's per-example normalised gradient (x0_fake - x0_real) / mean|x - x0_real| (the normaliser held fixed and
    floored at `eps`); zero where the two scores agree."""
    weight = jnp.maximum(_mean_abs(x - x0_real), eps)
    return jax.lax.stop_gradient((x0_fake - x0_real) / weight)


def distribution_matching_loss(x: Array, x0_real: Array, x0_fake: Array, weights: Array | None = None) -> Array:
    """L_DM = 0.5 mean (x - sg(x - grad))^2 with `grad = distribution_matching_gradient(...)`: its gradient w.r.t.
    the generator's sample `x` is grad / x.size, so back-propagation through x = G(z) gives DMD's update. Its value is
    0.5 mean grad^2 (a diagnostic: how far the fake score is from the real one). With per-example `weights [batch]`
    each example's term is scaled by w_i (Flash-DMD: 0 where the adversarial term takes over)."""
    grad = jnp.nan_to_num(distribution_matching_gradient(x, x0_real, x0_fake))
    target = jax.lax.stop_gradient(x - grad)
    squared = (x.astype(jnp.float32) - target.astype(jnp.float32)) ** 2
    if weights is None:
        return 0.5 * jnp.mean(squared)
    return 0.5 * jnp.mean(expand_to(jnp.asarray(weights, jnp.float32), squared) * squared)


def grid_times(schedule: Schedule, rng, batch: int, low: float, high: float, grid: int = TIME_GRID) -> Array:
    """`[batch]` times drawn uniformly among the indices [low * grid, high * grid) of the schedule's `grid`-step
    sampling grid (index 0 is the noise end t_max): e.g. DMD's [0.02, 0.98], SiD's sigma <= sigma at 0.2 of the grid."""
    times = jnp.asarray(schedule.timesteps(grid)[:-1], jnp.float32)
    first = min(round(low * grid), grid - 1)
    last = min(max(round(high * grid), first + 1), grid)
    return times[jax.random.randint(rng, (batch,), first, last)]


def generator_times(schedule: Schedule, steps: int, first: float | None = None) -> np.ndarray:
    """The generator's `steps` input times, from the noise end: the first `steps` of the schedule's `steps + 1`-step
    sampling grid (one step: t_max), the first replaced by `first` when given (SiD's sigma_init)."""
    times = np.asarray(schedule.timesteps(steps + 1)[:steps], np.float64)
    if first is not None:
        times[0] = first
    return times


def renoise(schedule: Schedule, x0: Array, t, eps: Array) -> Array:
    """x_t = alpha(t) x0 + sigma(t) eps (a scalar or `[batch]` t)."""
    t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), x0.shape[:1])
    return schedule.add_noise(x0, eps, t)


def noise_input(schedule: Schedule, z: Array, t) -> Array:
    """The generator's first input sigma(t) z (the data term alpha(t) x0 taken as negligible, as in the prior)."""
    return expand_to(schedule.sigma(jnp.broadcast_to(jnp.asarray(t, jnp.float32), z.shape[:1])), z) * z


def generate(x0_fn: Callable[[Array, Array], Array], schedule: Schedule, z: Array, times, rng) -> Array:
    """The K-step generator's sample from noise `z` (K = len(times)): x = x0_fn(sigma(t_1) z, t_1), then for each later
    time re-noise with fresh noise and denoise again. `x0_fn(x, t)` is the generator's x0 prediction."""
    times = np.asarray(times, np.float64)
    keys = jax.random.split(rng, len(times))
    t_b = jnp.full(z.shape[:1], times[0], jnp.float32)
    x = x0_fn(noise_input(schedule, z, t_b), t_b)
    for k in range(1, len(times)):
        t_b = jnp.full(z.shape[:1], times[k], jnp.float32)
        x = x0_fn(renoise(schedule, x, t_b, jax.random.normal(keys[k], z.shape)), t_b)
    return x


def backward_simulated_input(
    x0_fn: Callable[[Array, Array], Array], schedule: Schedule, z: Array, times, step: Array, rng
) -> tuple[Array, Array]:
    """(x_{t_k}, t_k) per example: the generator's own input at its step k = `step [batch]` (DMD2's backward
    simulation): its sample after k steps from `z` (held fixed, no gradient) re-noised to t_k; at k = 0 it is
    sigma(t_1) z. `times [K]`; returns `[batch, ...]`, `[batch]`."""
    times = np.asarray(times, np.float64)
    keys = jax.random.split(rng, len(times))
    table = jnp.asarray(times, jnp.float32)
    x_in = noise_input(schedule, z, table[0])
    current = x_in
    for k in range(1, len(times)):
        t_prev = jnp.full(z.shape[:1], table[k - 1])
        x0 = jax.lax.stop_gradient(x0_fn(current, t_prev))
        current = renoise(schedule, x0, table[k], jax.random.normal(keys[k], z.shape))
        x_in = jnp.where(expand_to(step == k, z), current, x_in)
    return jax.lax.stop_gradient(x_in), table[step]


def flash_weights(step: Array, split: int) -> tuple[Array, Array]:
    """Flash-DMD's timestep-aware split of a K-step generator's losses (Chen et al. 2025, "Flash-DMD: Towards
    High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint Reinforcement Learning"): per
    example, (distribution-matching weight, adversarial weight) = (1, 0) at the high-noise steps k < split (global
    structure) and (0, 1) at the low-noise steps k >= split (detail), so the two gradients never meet on one sample."""
    dm = (jnp.asarray(step) < split).astype(jnp.float32)
    return dm, 1.0 - dm


def class_log_likelihood(logits: Array, labels: Array) -> Array:
    """log p(label | x) per example from a classifier's `logits [batch, classes]`: the reward of DMD meets RL."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def teacher_corrected(
    x0: Array, teacher_x0: Callable[[Array, Array], Array], schedule: Schedule, t, weight: float, eps
):
    """Inference-time distillation (Park et al. 2024, "Inference-Time Diffusion Model Distillation", Distillation++):
    the teacher corrects a student's estimate x0 without retraining. x0 is re-noised to the teacher's time t,
    x_t = alpha(t) x0 + sigma(t) eps, and moved toward the teacher's denoising of it,

        x0 <- x0 + weight (x0_teacher(x_t, t) - x0),

    a step of size `weight` down the score-distillation loss 0.5 ||x0 - sg(x0_teacher(x_t, t))||^2 (weight 0: the
    student alone; weight 1: the teacher's one-step SDEdit of the student's sample). One teacher evaluation."""
    t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), x0.shape[:1])
    return x0 + weight * (teacher_x0(renoise(schedule, x0, t, eps), t) - x0)

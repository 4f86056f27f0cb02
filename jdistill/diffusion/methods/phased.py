"""Phased DMD (Fan et al. 2025, "Phased DMD: Few-step Distribution Matching Distillation via Score Matching within
Subintervals"): the pure parts (docs/diffusion_generators.md).

A K-step generator with input times t_1 > ... > t_K is trained phase by phase (progressive distribution matching):
phase k (0-based) trains the generator's step k alone, whose output is the sample at the end of its subinterval,

    x_s = alpha(s) x0_theta(x_{t_k}, t_k) + sigma(s) eps,      s = t_{k+1} (s = 0, the data, for the last phase),

so each phase matches the distribution of x_s, a noisier and easier target than the data. Both the distribution
matching and the fake score work inside the subinterval: times t in (s, t_k], and x_t is the forward diffusion of
x_s from s to t,

    x_t = a x_s + b eps',   a = alpha(t) / alpha(s),   b^2 = sigma(t)^2 - a^2 sigma(s)^2,

("score matching within subintervals"). The fake score cannot regress onto a clean x0 (only x_s exists), but by
Tweedie's formula on the full path and on the transition s -> t the unbiased x0 target is

    E[x0 | x_t] = E[ (x_t - (sigma(t)^2 / b) eps') / alpha(t)  |  x_t ],

so the fake score minimises w ||x0_psi(x_t, t) - (x_t - sigma(t)^2 eps' / b) / alpha(t)||^2 with w = (b / sigma(t))^4
(the error measured on the implied x_s prediction, which vanishes as t -> s where the target's variance grows). At
s = 0 the target is x0 and w = 1: plain denoising. The generator's distribution-matching gradient is DMD's,
(x0_fake - x0_real)(x_t, t) / mean|x0 - x0_real|, applied to x_s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jdistill.diffusion.methods.dmd import TIME_GRID, distribution_matching_gradient
from jdistill.diffusion.schedules import Schedule, expand_to


def phase_of(step: Array, total_steps: int, phases: int) -> Array:
    """The phase of training step `step`: floor(step K / total), at most K - 1 (phases of equal length)."""
    phase = jnp.floor(jnp.asarray(step, jnp.float32) * phases / max(total_steps, 1)).astype(jnp.int32)
    return jnp.clip(phase, 0, phases - 1)


def boundaries(times: np.ndarray) -> np.ndarray:
    """The end s of each phase's subinterval: the generator's next input time, 0 (the data) after the last."""
    return np.append(np.asarray(times, np.float64)[1:], 0.0)


def subinterval_times(schedule: Schedule, rng, phase: Array, times: np.ndarray, grid: int = TIME_GRID) -> Array:
    """`[batch]` (per-example `phase [batch]`) times among the schedule's `grid`-step sampling grid inside the phase's
    subinterval (s, t_k]."""
    table = np.asarray(schedule.timesteps(grid)[:-1], np.float64)  # descending from t_max
    ends = boundaries(times)
    first = np.array([int(np.searchsorted(-table, -t, side="left")) for t in times])  # first grid time <= t_k
    last = np.array(
        [max(int(np.searchsorted(-table, -s, side="left")), f + 1) for s, f in zip(ends, first, strict=True)]
    )
    index = jax.random.randint(rng, phase.shape, jnp.asarray(first)[phase], jnp.asarray(last)[phase])
    return jnp.asarray(table, jnp.float32)[jnp.clip(index, 0, grid - 1)]


def transition(schedule: Schedule, s: Array, t: Array) -> tuple[Array, Array]:
    """(a, b) of the forward diffusion from time s to t > s: x_t = a x_s + b eps (`[batch]` each)."""
    a = schedule.alpha(t) / schedule.alpha(s)
    b = jnp.sqrt(jnp.maximum(schedule.sigma(t) ** 2 - (a * schedule.sigma(s)) ** 2, 1e-12))
    return a, b


def diffuse_from(schedule: Schedule, x_s: Array, s: Array, t: Array, eps: Array) -> Array:
    """x_t = a x_s + b eps: the forward diffusion of a sample at time s to time t (`[batch]` s, t)."""
    a, b = transition(schedule, s, t)
    return expand_to(a, x_s) * x_s + expand_to(b, x_s) * eps


def subinterval_target(schedule: Schedule, x_t: Array, s: Array, t: Array, eps: Array) -> tuple[Array, Array]:
    """(x0 target `[batch, ...]`, weight `[batch]`) of score matching within the subinterval: the target
    (x_t - sigma(t)^2 eps / b) / alpha(t), whose mean given x_t is E[x0 | x_t], and w = (b / sigma(t))^4."""
    _, b = transition(schedule, s, t)
    sigma_t, alpha_t = schedule.sigma(t), schedule.alpha(t)
    target = (x_t - expand_to(sigma_t**2 / b, eps) * eps) / expand_to(alpha_t, x_t)
    return target, (b / sigma_t) ** 4


def subinterval_score_loss(x0_pred: Array, target: Array, weight: Array) -> Array:
    """mean_i w_i mean_j (x0_pred - target)^2: the fake score's loss within the subinterval."""
    squared = ((x0_pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2).reshape(x0_pred.shape[0], -1)
    return jnp.mean(weight * jnp.mean(squared, axis=-1))


def phase_matching_loss(x_s: Array, x0: Array, x0_real: Array, x0_fake: Array) -> Array:
    """0.5 mean (x_s - sg(x_s - grad))^2 with DMD's grad = (x0_fake - x0_real) / mean|x0 - x0_real| (held fixed): its
    gradient w.r.t. the phase's output x_s is grad / size. At s = 0 (x_s = x0) it is DMD's loss."""
    grad = jnp.nan_to_num(distribution_matching_gradient(x0, x0_real, x0_fake))
    target = jax.lax.stop_gradient(x_s - grad)
    return 0.5 * jnp.mean((x_s.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)

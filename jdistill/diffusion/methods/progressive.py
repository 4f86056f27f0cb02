"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models").

A student with N deterministic DDIM steps learns to take, in one step t -> s, the two DDIM steps t -> m -> s of a
teacher that samples with 2N steps. The student's data prediction is regressed on the x0 that makes its single DDIM
step land exactly where the teacher's two steps landed, which Salimans & Ho derive in closed form. Each round halves
the step count; the trained student becomes the next round's teacher (N -> N/2 -> ... -> 1).

Time grids are decreasing arrays `[2N + 1]` in the teacher schedule's own time (sigma for EDM, t for VP and rectified
flow), noise end first (`schedule.timesteps(2N)`); any `jdistill.diffusion.schedules.Schedule` works.
Shapes: samples `[batch, ...]`, times `[batch]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import regression_loss
from jdistill.diffusion.schedules import Schedule, ddim_step, expand_to

WEIGHTINGS = ("truncated_snr", "snr_plus_one", "none")


def progressive_target(
    x_t: ArrayLike,
    x_s: ArrayLike,
    alpha_t: ArrayLike,
    sigma_t: ArrayLike,
    alpha_s: ArrayLike,
    sigma_s: ArrayLike,
) -> Array:
    """The data prediction whose one DDIM step t -> s from x_t lands exactly on x_s.

    Salimans & Ho 2022, Algorithm 2: x~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).
    Solving x_s = alpha_s x~ + sigma_s (x_t - alpha_t x~) / sigma_t (DDIM) for x~ gives this; when s is the end of
    sampling (sigma_s = 0) the target is x_s / alpha_s itself. The denominator is nonzero whenever s is less noisy
    than t (its log-SNR is higher).
    """
    alpha_t, sigma_t, alpha_s, sigma_s = (jnp.asarray(v) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    ratio = sigma_s / sigma_t
    return (jnp.asarray(x_s) - ratio * jnp.asarray(x_t)) / (alpha_s - ratio * alpha_t)


def teacher_two_steps(
    teacher_x0: Callable[[Array, Array], Array],
    x_t: ArrayLike,
    times: tuple[ArrayLike, ArrayLike, ArrayLike],
    schedule: Schedule,
) -> Array:
    """The teacher's two DDIM steps t -> m -> s from x_t, `times = (t, m, s)` each `[batch]`; returns x_s."""
    x = jnp.asarray(x_t)
    t, m, s = (jnp.asarray(time) for time in times)
    for start, end in ((t, m), (m, s)):
        x = ddim_step(schedule, x, start, end, teacher_x0(x, start))
    return x


def progressive_weights(alpha_t: ArrayLike, sigma_t: ArrayLike, weighting: str = "truncated_snr") -> Array:
    """Per-example weights of the x-space error ||x~ - x_hat||^2, `[batch]`.

    Salimans & Ho 2022, section 4: "truncated SNR" max(alpha^2 / sigma^2, 1) (the larger of the x- and eps-space
    errors), or "SNR+1" (alpha^2 + sigma^2) / sigma^2 (the error of the velocity prediction); "none" gives 1. The
    plain eps-space loss (weight alpha^2 / sigma^2) vanishes at the pure-noise end that a one-step student needs.
    """
    snr = jnp.asarray(alpha_t, jnp.float32) ** 2 / jnp.asarray(sigma_t, jnp.float32) ** 2
    if weighting == "truncated_snr":
        return jnp.maximum(snr, 1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    if weighting == "none":
        return jnp.ones_like(snr)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def progressive_distillation_loss(
    student_x0: ArrayLike,
    teacher_x_s: ArrayLike,
    x_t: ArrayLike,
    times: tuple[ArrayLike, ArrayLike],
    schedule: Schedule,
    *,
    weighting: str = "truncated_snr",
) -> Array:
    """L = mean_i w(t_i) mean((x~_i - x_hat_i)^2), x~ = `progressive_target` of the teacher's two-step result.

    Salimans & Ho 2022. `student_x0` is the student's data prediction at (x_t, t), `teacher_x_s` the teacher's two
    DDIM steps t -> m -> s (`teacher_two_steps`), `times = (t, s)` each `[batch]`. The target is held fixed. When the
    student's x0 equals the target, its one DDIM step reproduces the teacher's two exactly and the loss is 0.
    """
    t, s = (jnp.asarray(time) for time in times)
    x_t = jnp.asarray(x_t)
    alpha_t, sigma_t, alpha_s, sigma_s = (
        fn(time) for fn, time in ((schedule.alpha, t), (schedule.sigma, t), (schedule.alpha, s), (schedule.sigma, s))
    )
    coefficients = (expand_to(v, x_t) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    target = progressive_target(x_t, teacher_x_s, *coefficients)
    return regression_loss(student_x0, target, weights=progressive_weights(alpha_t, sigma_t, weighting))


def round_step_counts(initial_steps: int, final_steps: int = 1) -> list[int]:
    """The student step counts of successive rounds: initial_steps / 2, initial_steps / 4, ..., final_steps.

    The teacher of the first round samples with `initial_steps`; each round's student takes half its teacher's
    steps. Both counts must be powers of two with final_steps < initial_steps.
    """
    if initial_steps < 2 or initial_steps & (initial_steps - 1) or final_steps < 1 or final_steps & (final_steps - 1):
        raise ValueError(f"step counts must be powers of two, got {initial_steps} -> {final_steps}")
    if final_steps >= initial_steps:
        raise ValueError(f"final_steps ({final_steps}) must be below initial_steps ({initial_steps})")
    counts, steps = [], initial_steps
    while steps > final_steps:
        steps //= 2
        counts.append(steps)
    return counts


def sample_student_step(key: Array, grid: ArrayLike, batch: int) -> tuple[Array, Array, Array]:
    """(t, m, s) for a batch: a student step i ~ U{0..N-1} of the teacher grid `[2N + 1]` (decreasing), t = grid[2i],
    m = grid[2i + 1], s = grid[2i + 2]; the student's own grid is grid[::2]."""
    grid = jnp.asarray(grid)
    steps = (grid.shape[0] - 1) // 2
    index = jax.random.randint(key, (batch,), 0, steps)
    return grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]

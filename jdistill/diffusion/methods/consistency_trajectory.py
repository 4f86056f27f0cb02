"""Consistency toward any earlier time: Trajectory Consistency Distillation, Target-Driven Distillation, Hyper-SD.

All three replace the consistency function's single target time (the trajectory's origin) by a time s <= t on the
same probability-flow ODE trajectory, through the **trajectory consistency function** of TCD (Zheng et al. 2024,
"Trajectory Consistency Distillation"), in its first-order semi-linear (exponential-integrator) form:

    f_theta(x_t, t, s) = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0_theta(x_t, t),  h = lambda_s - lambda_t,

which is `schedules.ddim_step` from t to s with the network's data prediction; f(x, t, t) = x exactly and s at the
clean end gives x0_theta. The objective is the consistency loss between the student at the noisier point and the
EMA target at the teacher-stepped point, both mapped to the same s:

    L = E d( f_theta(x_{t_{n+1}}, t_{n+1}, s), sg f_theta-(x^_{t_n}, t_n, s) ),  s <= t_n.

The three methods differ in how s is chosen:
- TCD: s drawn in [0, t_n] (`tcd_target_times`), and sampling by strategic stochastic sampling.
- TDD (Wang et al. 2024, "Target-Driven Distillation"): s is the next time of a few-step schedule drawn from a
  predefined set, with a tolerance (`tdd_target_times`); guidance is decoupled in training (`guidance.py`).
- Hyper-SD (Ren et al. 2024): s is the end (toward the data) of the trajectory segment that holds t, with the
  number of segments going 8 -> 4 -> 2 -> 1 over the training stages (`segment_end_index`, `hyper_sd_segments`).
  Its human-feedback stage follows: reward feedback learning (ReFL, Xu et al. 2023) on the student's one-step
  prediction, here with a classifier's log-likelihood of the condition as the reward (`reward_feedback_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import regression_loss
from jdistill.diffusion.schedules import Schedule, ddim_step, expand_to

HYPER_SD_STAGES = (8, 4, 2, 1)


def trajectory_consistency_function(
    x_t: ArrayLike, x0_hat: ArrayLike, t: ArrayLike, s: ArrayLike, schedule: Schedule
) -> Array:
    """f(x_t, t, s): the first-order semi-linear map of x_t from time t to time s <= t given the data prediction
    x0_hat at (x_t, t) (TCD, eq. 13 at first order); `t`, `s` `[batch]`. f(x, t, t) = x.

    Where t is the data end itself (sigma(t) = 0, so s = t; VP and flow grids end there), the step's eps is 0 / 0:
    f is x_t there, computed from a finite stand-in time so that no NaN reaches the value or its gradient."""
    x_t, t, s = jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(s)
    noisy = schedule.sigma(t) > 0
    step = ddim_step(schedule, x_t, jnp.where(noisy, t, schedule.t_max), s, jnp.asarray(x0_hat))
    return jnp.where(expand_to(noisy, x_t), step, x_t)


def trajectory_consistency_loss(
    x_next: ArrayLike,
    student_x0: ArrayLike,
    x_cur: ArrayLike,
    target_x0: ArrayLike,
    times: tuple[ArrayLike, ArrayLike, ArrayLike],
    schedule: Schedule,
    *,
    metric: str = "l2",
    weights: ArrayLike | None = None,
) -> Array:
    """d(f_theta(x_{t_{n+1}}, t_{n+1}, s), sg f_theta-(x^_{t_n}, t_n, s)) averaged over the batch (TCD, eq. 15).

    `student_x0`: the student's (boundary-conditioned) data prediction at (x_next, t_{n+1}); `target_x0`: the EMA
    network's at (x_cur, t_n), x_cur the teacher's ODE step from x_next; `times = (t_{n+1}, t_n, s)` `[batch]` with
    s <= t_n. At s = t_n the target is x_cur itself (the student learns the teacher's step); at s = 0 this is
    consistency distillation.
    """
    t_next, t_cur, s = times
    online = trajectory_consistency_function(x_next, student_x0, t_next, s, schedule)
    target = trajectory_consistency_function(x_cur, target_x0, t_cur, s, schedule)
    return regression_loss(online, target, weights=weights, metric=metric)


def tcd_target_times(key: Array, t_cur: ArrayLike, t_min: float = 0.0) -> Array:
    """s ~ U[t_min, t_n] per example: TCD trains the map to every earlier time of the trajectory, not only its origin
    (the uniform draw is our choice; the paper broadens the boundary to s in [0, t_n])."""
    t_cur = jnp.asarray(t_cur, jnp.float32)
    return t_min + jax.random.uniform(key, t_cur.shape) * (t_cur - t_min)


def strategic_stochastic_step(
    x_t: ArrayLike,
    x0_hat: ArrayLike,
    t: ArrayLike,
    t_next: ArrayLike,
    noise: ArrayLike,
    schedule: Schedule,
    gamma: float,
) -> Array:
    """One step of TCD's strategic stochastic sampling (Algorithm 4), t -> t_next < t:

        s = (1 - gamma) t_next,  x_s = f(x_t, t, s),
        x_{t_next} = (alpha_next / alpha_s) x_s + sqrt(sigma_next^2 - (alpha_next / alpha_s)^2 sigma_s^2) z.

    gamma = 0 is the deterministic DDIM step to t_next; gamma = 1 maps to the clean end and re-noises afresh
    (consistency models' multistep sampling). `t`, `t_next` `[batch]`; `noise` like `x_t`.
    """
    x_t = jnp.asarray(x_t)
    s = (1.0 - gamma) * jnp.asarray(t_next)
    x_s = trajectory_consistency_function(x_t, x0_hat, t, s, schedule)
    alpha_s, sigma_s = expand_to(schedule.alpha(s), x_t), expand_to(schedule.sigma(s), x_t)
    alpha_next, sigma_next = expand_to(schedule.alpha(t_next), x_t), expand_to(schedule.sigma(t_next), x_t)
    scale = alpha_next / alpha_s
    std = jnp.sqrt(jnp.maximum(sigma_next**2 - (scale * sigma_s) ** 2, 0.0))
    return scale * x_s + std * jnp.asarray(noise)


def strategic_stochastic_sample(
    x0_fn: Callable[[Array, Array], Array],
    x_start: ArrayLike,
    grid: ArrayLike,
    key: Array,
    schedule: Schedule,
    gamma: float = 0.3,
) -> Array:
    """Sample with `len(grid) - 1` network evaluations by strategic stochastic steps along the decreasing `grid`
    (its last entry the clean end); one `lax.scan`, no Python loop per step. gamma = 0.3 is TCD's default."""
    x_start, grid = jnp.asarray(x_start), jnp.asarray(grid, jnp.float32)
    batch = x_start.shape[0]

    def step(x, inputs):
        t, t_next, step_key = inputs
        t_b, next_b = jnp.full((batch,), t), jnp.full((batch,), t_next)
        noise = jax.random.normal(step_key, x.shape, x.dtype)
        return strategic_stochastic_step(x, x0_fn(x, t_b), t_b, next_b, noise, schedule, gamma), None

    keys = jax.random.split(key, grid.shape[0] - 1)
    x, _ = jax.lax.scan(step, x_start, (grid[:-1], grid[1:], keys))
    return x


def tdd_schedules(step_counts: Sequence[int], t_max: float, t_min: float = 0.0) -> Array:
    """The predefined set of few-step schedules: row k holds the equidistant grid of `step_counts[k]` steps from
    t_max down to t_min, padded at the end with t_min to `[len(step_counts), max(step_counts) + 1]`."""
    width = max(step_counts) + 1
    rows = []
    for count in step_counts:
        grid = jnp.linspace(t_max, t_min, count + 1)
        rows.append(jnp.concatenate([grid, jnp.full((width - count - 1,), t_min)]))
    return jnp.stack(rows).astype(jnp.float32)


def tdd_target_times(key: Array, t_cur: ArrayLike, schedules: ArrayLike, tolerance: float = 0.0) -> Array:
    """TDD's target timestep selection: per example, draw one schedule of the predefined set (`tdd_schedules`),
    take its largest time strictly below t_n (the clean end if none), and move it down by U[0, tolerance] (in time
    units), never below the clean end. Training toward the times a few-step sampler actually visits is TDD's
    point; the uniform tolerance is our reading of its "tolerance" (docs/diffusion_methods.md)."""
    t_cur = jnp.asarray(t_cur, jnp.float32)
    schedules = jnp.asarray(schedules, jnp.float32)
    pick_key, jitter_key = jax.random.split(key)
    rows = schedules[jax.random.randint(pick_key, t_cur.shape, 0, schedules.shape[0])]
    t_end = schedules[0, -1]
    below = jnp.where(rows < t_cur[:, None], rows, -jnp.inf)
    target = jnp.maximum(jnp.max(below, axis=-1), t_end)
    jitter = jax.random.uniform(jitter_key, t_cur.shape) * tolerance
    return jnp.maximum(target - jitter, t_end)


def segment_end_index(index: ArrayLike, num_intervals: int, num_segments: ArrayLike) -> Array:
    """Hyper-SD's target: the grid index where the segment holding step `index` ends (toward the data end).

    The training grid has `num_intervals` steps (index 0 the noise end); it is split into `num_segments` segments of
    L = num_intervals / num_segments steps, and a point at index n (in the segment [jL, (j + 1) L)) is mapped to the
    segment's end (j + 1) L. One segment is consistency distillation (every point maps to the boundary);
    `num_intervals` segments is plain trajectory distillation of one teacher step (s = t_n). The segment ends are the
    grid of a `num_segments`-step sampler. `num_segments` may be traced; it must divide `num_intervals`."""
    length = num_intervals // jnp.asarray(num_segments)
    return (jnp.asarray(index) // length + 1) * length


def hyper_sd_segments(step: ArrayLike, total_steps: int, stages: Sequence[int] = HYPER_SD_STAGES) -> Array:
    """The number of segments at training step `step` of `total_steps`: the stages (8 -> 4 -> 2 -> 1 by default)
    take equal shares of the steps, in order; may be traced."""
    stage = jnp.floor(jnp.asarray(step, jnp.float32) * len(stages) / max(total_steps, 1)).astype(jnp.int32)
    stage = jnp.clip(stage, 0, len(stages) - 1)
    return jnp.asarray(stages)[stage]


def reward_feedback_loss(logits: ArrayLike, labels: ArrayLike, null_label: int) -> Array:
    """Hyper-SD's human-feedback loss with a classifier as the reward model: the negative reward

        L_HF = - mean_{i: c_i != null} log p_r(c_i | x0_hat_i),

    where `logits [batch, classes]` are the reward classifier's on the student's one-step predictions x0_hat of
    noisy training points (ReFL scores the denoised prediction, not a full sample) and `labels [batch]` the
    conditions. Examples with the null label have no condition to reward and are left out (0 when none has one)."""
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    labels = jnp.asarray(labels)
    conditioned = labels != null_label
    safe = jnp.where(conditioned, labels, 0)
    picked = jnp.take_along_axis(log_probs, safe[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(conditioned, picked, 0.0)) / jnp.maximum(jnp.sum(conditioned), 1)

"""What every trajectory-distillation objective shares: per-example distances and the regression to a fixed target.

The methods are written once for every diffusion family through `jdistill.diffusion.schedules`: a `Schedule` gives
the Gaussian path x_t = alpha(t) x0 + sigma(t) eps (EDM, variance-preserving, rectified flow) and `ddim_step` the
first-order step between two times. A denoiser is a callable `x0_fn(x, t) -> x0_hat` (conditioning closed over).
Shapes: samples `[batch, ...]`; per-example values `[batch]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.schedules import Schedule, ddim_step

METRICS = ("l2", "l1", "pseudo_huber")
# iCT (Song & Dhariwal 2023): the pseudo-Huber constant c = 0.00054 sqrt(d) for a sample of d numbers.
PSEUDO_HUBER_SCALE = 0.00054


def per_example_distance(a: ArrayLike, b: ArrayLike, metric: str = "l2", huber_c: float | None = None) -> Array:
    """Distance between two batches of samples, one value per example, `[batch]`.

    - "l2": the mean over the sample's numbers of (a - b)^2;
    - "l1": the mean of |a - b|;
    - "pseudo_huber": sqrt(||a - b||^2 + c^2) - c (Song & Dhariwal 2023, improved consistency training), with
      c = 0.00054 sqrt(d) for d numbers per sample unless `huber_c` is given. Near 0 it is ||a - b||^2 / (2c), far
      away ||a - b||: robust to outliers like l1, smooth like l2.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    diff = (a - b).reshape(a.shape[0], -1)
    if metric == "l2":
        return jnp.mean(diff**2, axis=-1)
    if metric == "l1":
        return jnp.mean(jnp.abs(diff), axis=-1)
    if metric == "pseudo_huber":
        c = PSEUDO_HUBER_SCALE * math.sqrt(diff.shape[-1]) if huber_c is None else huber_c
        return jnp.sqrt(jnp.sum(diff**2, axis=-1) + c**2) - c
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def regression_loss(
    prediction: ArrayLike, target: ArrayLike, *, weights: ArrayLike | None = None, metric: str = "l2"
) -> Array:
    """mean_i w_i d(prediction_i, sg(target_i)): the target is held fixed (stop_gradient), the batch is averaged.

    `weights [batch]` (None: all 1) are used as given, not renormalised: they carry each paper's loss weighting
    (e.g. truncated-SNR or 1 / (sigma_{n+1} - sigma_n)).
    """
    values = per_example_distance(prediction, jax.lax.stop_gradient(target), metric)
    if weights is not None:
        values = values * jnp.asarray(weights, jnp.float32)
    return jnp.mean(values)


def teacher_trajectory(
    teacher_x0: Callable[[Array, Array], Array], x_start: ArrayLike, grid: ArrayLike, schedule: Schedule
) -> Array:
    """Every state of the teacher's DDIM ODE solve from `x_start` along the decreasing `grid [N + 1]`: `[N + 1,
    batch, ...]` (row 0 is `x_start`); one `lax.scan`, the teacher held fixed."""
    x_start, grid = jnp.asarray(x_start), jnp.asarray(grid, jnp.float32)
    batch = x_start.shape[0]

    def step(x, times):
        t, s = jnp.full((batch,), times[0]), jnp.full((batch,), times[1])
        x_next = ddim_step(schedule, x, t, s, jax.lax.stop_gradient(teacher_x0(x, t)))
        return x_next, x_next

    _, states = jax.lax.scan(step, x_start, jnp.stack([grid[:-1], grid[1:]], axis=-1))
    return jnp.concatenate([x_start[None], states], axis=0)

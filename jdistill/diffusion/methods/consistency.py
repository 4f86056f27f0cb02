"""Consistency distillation and consistency training (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models";
Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models").

A consistency function f(x_t, t) maps every point of a probability-flow ODE trajectory to the trajectory's origin.
It is parameterised so that the boundary condition f(x, t_min) = x holds exactly, f = c_skip(t) x + c_out(t) F, and
trained so that two adjacent points of one trajectory map to the same place:

    L = E[ lambda(t_n) d( f_theta(x_{t_{n+1}}, t_{n+1}), sg f_theta-(x^_{t_n}, t_n) ) ]

with theta- an exponential moving average of theta (the target network). Consistency *distillation* (CD) gets
x^_{t_n} from x_{t_{n+1}} by one step of the teacher's ODE solver; consistency *training* (CT) needs no teacher: it
puts the same noise on the same data point at both times, x_{t_n} = alpha_n x0 + sigma_n z, which is the teacher step
taken with the one-sample denoiser x0_hat = x0 (`ct_pair` equals `cd_pair` with that denoiser).

Times are in the teacher schedule's own units (`jdistill.diffusion.schedules.Schedule`: sigma for EDM, t for VP and
rectified flow). Shapes: samples `[batch, ...]`, times `[batch]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import regression_loss
from jdistill.diffusion.schedules import Schedule, ddim_step, expand_to

SIGMA_MIN = 0.002
SIGMA_DATA = 0.5
OUTPUTS = ("raw", "x0")
TEACHER_SOLVERS = ("ddim", "heun")


def consistency_scalings(sigma: ArrayLike, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out) of Consistency Models, appendix C:

        c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
        c_out(sigma)  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)

    c_skip(sigma_min) = 1 and c_out(sigma_min) = 0 exactly, so f(x, sigma_min) = x whatever the network outputs.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def consistency_function(
    x: ArrayLike,
    network_output: ArrayLike,
    sigma: ArrayLike,
    *,
    output: str = "raw",
    sigma_min: float = SIGMA_MIN,
    sigma_data: float = SIGMA_DATA,
) -> Array:
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F, `sigma [batch]`, boundary f(x, sigma_min) = x exactly.

    `output="raw"`: F is a unit-variance network output, as in Consistency Models. `output="x0"`: F is a data
    prediction (a pre-trained denoiser's x0_hat, as latent consistency models reuse it); c_out is divided by
    sigma_data so that f -> x0_hat at large sigma (a paper-inspired choice for families whose denoiser already
    predicts data). For VP or rectified-flow teachers pass the family's time t as `sigma`, with `sigma_min` the
    smallest time sampled.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    x = jnp.asarray(x)
    c_skip, c_out = consistency_scalings(sigma, sigma_min, sigma_data)
    if output == "x0":
        c_out = c_out / sigma_data
    return expand_to(c_skip, x) * x + expand_to(c_out, x) * jnp.asarray(network_output)


def cd_pair(
    teacher_x0: Callable[[Array, Array], Array],
    x0: ArrayLike,
    noise: ArrayLike,
    times: tuple[ArrayLike, ArrayLike],
    schedule: Schedule,
    *,
    solver: str = "ddim",
) -> tuple[Array, Array]:
    """(x_{t_{n+1}}, x^_{t_n}) for consistency distillation, `times = (t_{n+1}, t_n)` each `[batch]`, t_n < t_{n+1}.

    x_{t_{n+1}} = alpha x0 + sigma z; x^_{t_n} is one step of the teacher's ODE solver from it (`teacher_step`):
    `solver="ddim"` (one evaluation) or `"heun"` (two, Consistency Models' choice for EDM teachers). The teacher's
    output is held fixed.
    """
    t_next, t_cur = (jnp.asarray(time) for time in times)
    x_next = schedule.add_noise(jnp.asarray(x0), jnp.asarray(noise), t_next)
    return x_next, teacher_step(teacher_x0, x_next, t_next, t_cur, schedule, solver=solver)


def teacher_step(
    teacher_x0: Callable[[Array, Array], Array],
    x: ArrayLike,
    t: ArrayLike,
    s: ArrayLike,
    schedule: Schedule,
    *,
    solver: str = "ddim",
) -> Array:
    """One step of the teacher's probability-flow ODE from time t to s < t (`[batch]` each), held fixed.

    "ddim": `schedules.ddim_step` with x0_hat(x, t) (Euler for EDM and the flow). "heun": EDM's second-order step
    (Karras et al. 2022, Algorithm 1) in the schedule's own time, with v = dx/dt from the x0 prediction:

        x' = x + (s - t) v(x, t),   x_s = x + (s - t) (v(x, t) + v(x', s)) / 2,

    and the DDIM step where s is the data end (sigma(s) = 0, where v(., s) is undefined), as EDM does.
    """
    if solver not in TEACHER_SOLVERS:
        raise ValueError(f"solver must be one of {TEACHER_SOLVERS}, got {solver!r}")
    x, t, s = jnp.asarray(x), jnp.asarray(t), jnp.asarray(s)
    x0_hat = jax.lax.stop_gradient(teacher_x0(x, t))
    first = ddim_step(schedule, x, t, s, x0_hat)
    if solver == "ddim":
        return first
    velocity = schedule.velocity_from_x0(x, t, x0_hat)
    step = expand_to(s - t, x)
    euler = x + step * velocity
    interior = schedule.sigma(s) > 0
    s_safe = jnp.where(interior, s, t)  # keeps v(x', s) finite where the correction is not taken
    corrected = schedule.velocity_from_x0(euler, s_safe, jax.lax.stop_gradient(teacher_x0(euler, s_safe)))
    heun = x + step * 0.5 * (velocity + corrected)
    return jnp.where(expand_to(interior, x), heun, first)


def ct_pair(
    x0: ArrayLike, noise: ArrayLike, times: tuple[ArrayLike, ArrayLike], schedule: Schedule
) -> tuple[Array, Array]:
    """(x_{t_{n+1}}, x_{t_n}) for consistency training: the same data point and the same noise at both times."""
    x0, noise = jnp.asarray(x0), jnp.asarray(noise)
    t_next, t_cur = (jnp.asarray(time) for time in times)
    return schedule.add_noise(x0, noise, t_next), schedule.add_noise(x0, noise, t_cur)


def consistency_loss(
    online: ArrayLike, target: ArrayLike, *, weights: ArrayLike | None = None, metric: str = "l2"
) -> Array:
    """E[lambda d(f_theta(x_{t_{n+1}}, t_{n+1}), sg f_theta-(x^_{t_n}, t_n))] (Consistency Models, eq. 7 / 10).

    `online` = f_theta at the noisier point, `target` = the EMA network at the cleaner point (held fixed), both
    `[batch, ...]`; `metric` "l2", "l1" or "pseudo_huber" (iCT); `weights [batch]` lambda(t_n) (`ict_weights`).
    """
    return regression_loss(online, target, weights=weights, metric=metric)


def ict_weights(sigma_next: ArrayLike, sigma_cur: ArrayLike) -> Array:
    """lambda = 1 / (sigma_{n+1} - sigma_n) (iCT, section 3.4): small steps, which carry small errors, weigh more."""
    return 1.0 / (jnp.asarray(sigma_next, jnp.float32) - jnp.asarray(sigma_cur, jnp.float32))


def ict_discretization_steps(step: int, total_steps: int, initial: int = 10, final: int = 1280) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(s1 / s0) + 1)) (iCT, section 3.3).

    The number of discretisation points of the CT grid at training step k of K: the grid doubles at equal intervals
    from s0 + 1 points to s1 + 1. A Python function of the step (the grid size is static inside a jitted step).
    """
    doublings = math.floor(total_steps / (math.log2(final / initial) + 1))
    return min(initial * 2 ** (step // max(doublings, 1)), final) + 1


def ict_index_probabilities(sigmas: ArrayLike, p_mean: float = -1.1, p_std: float = 2.0) -> Array:
    """p(n) over the grid's steps n = 0 .. N-2 (iCT, section 3.5): the lognormal N(p_mean, p_std^2) mass of
    log sigma between sigma_n and sigma_{n+1}, normalised; `sigmas [N]` increasing."""
    log_sigma = jnp.log(jnp.asarray(sigmas, jnp.float32))
    cdf = jax.scipy.special.erf((log_sigma - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / jnp.sum(mass)

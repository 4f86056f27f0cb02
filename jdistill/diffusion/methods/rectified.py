"""Rectified-flow distillation: reflow, SlimFlow, TraFlow and shortcutting a pre-trained flow.

Path and time as in jdistill's rectified flow: x_t = (1 - t) x0 + t z with t = 1 the noise end and t = 0 the data
end; a velocity model v(x_t, t) estimates dx_t/dt = z - x0, and sampling integrates from t = 1 down to t = 0, one
Euler step being x_{t-h} = x_t - h v(x_t, t). A velocity callable is `v_fn(x, t [batch]) -> v`. Shapes: samples
`[batch, ...]`, times and step sizes `[batch]`. Every loss is a mean over the batch of per-example mean squared
errors with its target held fixed.

- Reflow (Liu, Gong & Liu 2023, "Flow Straight and Fast"): couple each noise z with the teacher's ODE output
  x = ODE_teacher(z) and refit a flow on the straight interpolations of the pairs (`reflow_loss`); a flow of
  straight paths is exact in one Euler step, which one-step distillation (`one_step_distillation_loss`) then fixes.
- SlimFlow (Zhu, Liu & Liu 2024): annealing reflow (`annealed_noise`, `annealing_beta`) starts a smaller student
  from independent noise-data pairs and moves it to the teacher's couplings; flow-guided distillation
  (`flow_guided_distillation_loss`) regularises the one-step loss by a two-step prediction of the reflowed flow.
- TraFlow (Wu et al. 2025): output reconstruction, velocity approximation and self-consistency along the student's
  own straight trajectory (`traflow_loss`).
- Shortcut (Zhang et al. 2025, "Shortcutting Pre-trained Flow Matching Diffusion Models is Almost Free Lunch";
  Frans et al. 2025, "One Step Diffusion via Shortcut Models"): a step-size-conditioned velocity u(x, t, h) whose
  2h step equals two h steps (`shortcut_target`, `shortcut_loss`), distilled from the pre-trained flow at h = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import regression_loss
from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow, Schedule, expand_to

VelocityFn = Callable[[Array, Array], Array]
StepVelocityFn = Callable[[Array, Array, Array], Array]


FLOW = RectifiedFlow()


def interpolate(x0: ArrayLike, noise: ArrayLike, t: ArrayLike) -> Array:
    """x_t = (1 - t) x0 + t z, `t [batch]` (the rectified-flow schedule's `add_noise`)."""
    return FLOW.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))


def flow_time(schedule: Schedule, tau: ArrayLike) -> Array:
    """The rectified-flow time of the schedule's time tau: t = sigma / (alpha + sigma) (the same signal-to-noise
    ratio: x_tau = alpha x0 + sigma z is (alpha + sigma) times the flow's x_t = (1 - t) x0 + t z)."""
    alpha, sigma = schedule.alpha(jnp.asarray(tau)), schedule.sigma(jnp.asarray(tau))
    return sigma / (alpha + sigma)


def schedule_time(schedule: Schedule, t: ArrayLike) -> Array:
    """The inverse of `flow_time`: the schedule's time with sigma / alpha = t / (1 - t) (EDM: sigma itself; VP with
    linear betas: the root of beta_min tau + (beta_max - beta_min) tau^2 / 2 = log(1 + r^2)); `t` in [0, 1)."""
    t = jnp.asarray(t, jnp.float32)
    ratio = t / (1.0 - t)
    if isinstance(schedule, RectifiedFlow):
        return t
    if isinstance(schedule, EDM):
        return ratio
    if isinstance(schedule, VP):
        a, b = 0.5 * (schedule.beta_max - schedule.beta_min), schedule.beta_min
        c = jnp.log1p(ratio**2)
        return (-b + jnp.sqrt(b**2 + 4.0 * a * c)) / (2.0 * a) if a > 0 else c / b
    raise ValueError(f"no flow-time map for schedule {schedule.name!r}")


def x0_in_flow_time(x0_fn: Callable[[Array, Array], Array], schedule: Schedule, t_max: float):
    """A teacher's data prediction at a point (x_t, t) of the rectified-flow path, for a teacher of any Gaussian
    path: x0 = x0_fn((alpha + sigma) x_t, tau) with tau = `schedule_time(t)`. Times above `t_max` (the teacher's
    noise end in flow time) are evaluated at t_max, where the teacher was trained."""

    def flow_x0(x, t):
        x = jnp.asarray(x)
        tau = schedule_time(schedule, jnp.minimum(jnp.asarray(t, jnp.float32), t_max))
        scale = expand_to(schedule.alpha(tau) + schedule.sigma(tau), x)
        return x0_fn(scale * x, tau)

    return flow_x0


def euler_step(v_fn: VelocityFn, x: ArrayLike, t: ArrayLike, s: ArrayLike) -> Array:
    """One Euler step of dx/dt = v from t down to s: x_s = x_t - (t - s) v(x_t, t)."""
    x = jnp.asarray(x)
    return x - expand_to(jnp.asarray(t) - jnp.asarray(s), x) * v_fn(x, jnp.asarray(t))


def reflow_loss(v_pred: ArrayLike, x0: ArrayLike, noise: ArrayLike) -> Array:
    """E || v_theta(x_t, t) - (z - x0) ||^2 on the straight interpolation x_t of a coupling (z, x0) (Liu et al. 2023,
    eq. 1). With the teacher's couplings x0 = ODE_teacher(z) this is reflow; with independent pairs it is plain flow
    matching. `v_pred` is the model at x_t = `interpolate(x0, noise, t)`."""
    return regression_loss(v_pred, jnp.asarray(noise) - jnp.asarray(x0))


def one_step_distillation_loss(student_sample: ArrayLike, coupled_x0: ArrayLike, metric: str = "l2") -> Array:
    """E d(z - v_theta(z, 1), x0): the student's single Euler step from the noise z matches the coupled teacher
    output x0 = ODE_teacher(z) (Liu et al. 2023, section 2.3, "distillation"). `student_sample` = z - v_theta(z, 1)."""
    return regression_loss(student_sample, coupled_x0, metric=metric)


def straightness(v_fn: VelocityFn, noise: ArrayLike, x0: ArrayLike, t: ArrayLike) -> Array:
    """S = E || (z - x0) - v(x_t, t) ||^2 along the interpolation of a coupling, per example `[batch]` (Liu et al.
    2023, eq. 9 at sampled t): 0 iff the flow moves every pair on a straight line at constant speed."""
    noise, x0 = jnp.asarray(noise), jnp.asarray(x0)
    error = (noise - x0) - v_fn(interpolate(x0, noise, t), jnp.asarray(t))
    return jnp.mean(error.reshape(error.shape[0], -1) ** 2, axis=-1)


# --- SlimFlow ---------------------------------------------------------------------------------------------------


def annealing_beta(step: ArrayLike, anneal_steps: int) -> Array:
    """beta(k) = (1 + cos(pi min(k / K, 1))) / 2: 1 (independent pairs) at step 0, 0 (teacher couplings) from step K
    on. The cosine shape is our choice; SlimFlow only needs beta to move from 1 to 0 over the first steps."""
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / max(anneal_steps, 1), 0.0, 1.0)
    return 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


def annealed_noise(coupled_noise: ArrayLike, random_noise: ArrayLike, beta: ArrayLike) -> Array:
    """The noise side of SlimFlow's annealing-reflow pair: sqrt(1 - beta) z_coupled + sqrt(beta) z_random.

    The coupled noise is the teacher's ODE input for the pair's data point; an independent normal draw is mixed in
    with weight beta (variance-preserving, so the noise stays N(0, I)). beta = 1 is flow matching on random pairs,
    which a freshly initialised small student can fit; beta = 0 is reflow on the teacher's couplings."""
    beta = jnp.asarray(beta, jnp.float32)
    return jnp.sqrt(1.0 - beta) * jnp.asarray(coupled_noise) + jnp.sqrt(beta) * jnp.asarray(random_noise)


def two_step_prediction(v_fn: VelocityFn, noise: ArrayLike, t_mid: ArrayLike) -> Array:
    """Two Euler steps 1 -> t_mid -> 0 of the flow `v_fn` from the noise z, `t_mid [batch]` in (0, 1)."""
    noise = jnp.asarray(noise)
    ones = jnp.ones(noise.shape[:1], noise.dtype)
    x_mid = euler_step(v_fn, noise, ones, t_mid)
    return euler_step(v_fn, x_mid, jnp.asarray(t_mid), jnp.zeros_like(ones))


def flow_guided_distillation_loss(
    student_sample: ArrayLike,
    coupled_x0: ArrayLike,
    flow_two_step: ArrayLike,
    *,
    guide_weight: float = 1.0,
    metric: str = "l2",
) -> Array:
    """SlimFlow's flow-guided distillation: d(G(z), x0) + guide_weight d(G(z), x^_2step).

    G(z) = z - v_student(z, 1) is the one-step student, x0 the coupled teacher output for z, and x^_2step =
    `two_step_prediction` of the (reflowed) teacher flow from the same z at a random middle time: the second term
    keeps a small student near what the flow itself reaches in two steps, where the sparse couplings alone overfit.
    guide_weight = 0 is plain one-step distillation."""
    return regression_loss(student_sample, coupled_x0, metric=metric) + guide_weight * regression_loss(
        student_sample, flow_two_step, metric=metric
    )


# --- TraFlow -------------------------------------------------------------------------------------------------------


def traflow_loss(
    student_v: VelocityFn,
    teacher_v: VelocityFn,
    x_t: ArrayLike,
    t: ArrayLike,
    u: ArrayLike,
    teacher_x0: ArrayLike,
    *,
    reconstruction_weight: float = 1.0,
    velocity_weight: float = 1.0,
    consistency_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """TraFlow's three targets for a student map f(x_t, t, s) = x_t - (t - s) v_theta(x_t, t) (straight by
    construction), at a point x_t of the teacher's trajectory and an intermediate time u < t, both `[batch]`:

        reconstruction  d(f(x_t, t, 0), x0_teacher)             the teacher's many-step output from x_t
        velocity        d(v_theta(x_t, t), v_teacher(x_t, t))   the teacher's amount of change
        consistency     d(f(x_t, t, 0), sg f(x_u, u, 0)),  x_u = f(x_t, t, u)   one step = two steps of its own

    Returns (weighted sum, the three terms). A straight teacher with the student equal to it zeroes all three."""
    x_t, t, u = jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(u)
    v_t = student_v(x_t, t)
    one_step = x_t - expand_to(t, x_t) * v_t
    x_u = x_t - expand_to(t - u, x_t) * v_t
    two_steps = x_u - expand_to(u, x_t) * student_v(x_u, u)
    terms = {
        "reconstruction": regression_loss(one_step, teacher_x0),
        "velocity": regression_loss(v_t, teacher_v(x_t, t)),
        "consistency": regression_loss(one_step, two_steps),
    }
    total = (
        reconstruction_weight * terms["reconstruction"]
        + velocity_weight * terms["velocity"]
        + consistency_weight * terms["consistency"]
    )
    return total, terms


# --- Shortcut ------------------------------------------------------------------------------------------------------


def shortcut_target(u_fn: StepVelocityFn, x_t: ArrayLike, t: ArrayLike, h: ArrayLike) -> Array:
    """The self-consistency target of the 2h step: (u(x_t, t, h) + u(x', t - h, h)) / 2, x' = x_t - h u(x_t, t, h).

    Two Euler steps of size h, averaged into one velocity for a step of 2h (Frans et al. 2025, eq. 5, in our time
    direction). At h = 0 it is u(x_t, t, 0), the flow itself; for a field of straight paths it is the field."""
    x_t, t, h = jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(h)
    first = u_fn(x_t, t, h)
    x_next = x_t - expand_to(h, x_t) * first
    return 0.5 * (first + u_fn(x_next, t - h, h))


def shortcut_loss(
    student_at_zero: ArrayLike,
    flow_velocity: ArrayLike,
    student_at_2h: ArrayLike,
    target_2h: ArrayLike,
    *,
    consistency_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """d(u_theta(x, t, 0), v) + consistency_weight d(u_theta(x', t', 2h), sg shortcut_target(x', t', h)).

    The first term anchors the h = 0 velocity: v is the pre-trained flow's velocity (self-distillation, as the
    shortcut-a-pre-trained-flow paper does in velocity space) or z - x0 when data are given (flow matching). The
    second is the shortcut self-consistency, with the target from the student itself (held fixed). Returns
    (total, {"flow": ..., "shortcut": ...})."""
    terms = {
        "flow": regression_loss(student_at_zero, flow_velocity),
        "shortcut": regression_loss(student_at_2h, target_2h),
    }
    return terms["flow"] + consistency_weight * terms["shortcut"], terms


def shortcut_steps(key: Array, batch: int, max_log2: int = 7) -> tuple[Array, Array]:
    """(t, h) for the shortcut term: h = 2^-k with k ~ U{1..max_log2} (so 2h <= 1), and t a multiple of 2h in
    [2h, 1] (the grid a 1 / (2h)-step sampler visits), so the 2h step from t stays inside [0, 1]."""
    level_key, position_key = jax.random.split(key)
    k = jax.random.randint(level_key, (batch,), 1, max_log2 + 1)
    h = 2.0 ** (-k.astype(jnp.float32))
    big = 2.0 * h
    count = jnp.round(1.0 / big).astype(jnp.int32)
    index = jax.random.randint(position_key, (batch,), 1, count + 1)
    return index.astype(jnp.float32) * big, h

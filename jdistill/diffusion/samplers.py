"""Samplers with a fixed number of denoiser evaluations (NFE), as pure functions traced once: every step is a
`jax.lax.scan` over a time grid fixed in numpy before compilation, so no Python runs per step (docs/diffusion.md).

    x0 = sample(denoise_fn, x_T, schedule, nfe, sampler="heun")          # denoise_fn(x, t) -> x0 estimate
    run, params = make_sampler(model, schedule, sampler="dpmpp_2m", nfe=8, guidance_scale=2.0)
    images = run(params, schedule.prior(rng, (n, 8, 8, 1)), labels, rng)   # jitted

`denoise_fn(x, t) -> x0_hat` takes the batch `x` and the grid time `t` (a scalar); `guided_denoiser` builds it from
a denoiser module, with classifier-free guidance. NFE counts denoiser evaluations: one evaluation with guidance is
one batched pass over the conditional and the null-class inputs (2 x the forward cost, as usual in the field).

| sampler      | steps for NFE n | update from t_i to t_{i+1}                                                         |
| ------------ | --------------- | ---------------------------------------------------------------------------------- |
| `euler`      | n               | x + (t_{i+1} - t_i) v(x, t_i), v the ODE velocity (EDM: (x - x0) / sigma)          |
| `heun`       | ceil((n+1)/2)   | Euler, then the trapezoidal correction with v at t_{i+1} on the first n - steps    |
|              |                 | steps; the last step, into the data end, stays Euler (EDM Algorithm 1: 35 NFE is   |
|              |                 | 18 steps)                                                                          |
| `ddim`       | n               | alpha_{i+1} x0 + sigma_{i+1} eps_hat (eta = 0; eta > 0 adds DDPM-like noise)     |
| `dpmpp_2m`   | n               | DPM-Solver++(2M) (Lu et al. 2022): x_{i+1} = (sigma_{i+1}/sigma_i) x + alpha_{i+1} |
|              |                 | (1 - e^{-h_i}) D_i, D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}, h the log-SNR |
|              |                 | step, r_i = h_{i-1} / h_i; first order on the first step and wherever h is infinite |
|              |                 | (the step into sigma = 0, or out of alpha = 0)                                     |
| `flow_euler` | n               | Euler on a rectified flow: x + (t_{i+1} - t_i) v (rectified-flow schedules only)  |
| `consistency`| n               | multistep consistency sampling (Song et al. 2023, Algorithm 1): x = f(x_T, T), then |
|              |                 | for each later time tau: x = f(alpha_tau x + sigma_tau z, tau)                     |

The grids are `schedule.timesteps(steps)` (EDM: Karras sigmas; VP and flow: uniform in t) unless `timesteps` is
given; `consistency` uses `consistency_grid` (it ends at the consistency boundary, EDM's sigma_min, not at 0) without
its last point, so each of its n evaluations is at a time above the boundary, where f is not the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.diffusion.schedules import EDM, RectifiedFlow, Schedule, check_steps, ddim_step, predict
from jdistill.errors import ConfigError

SAMPLERS = ("euler", "heun", "ddim", "dpmpp_2m", "flow_euler", "consistency")
STOCHASTIC = ("consistency",)  # samplers that always need `rng` (ddim needs it when eta > 0)

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_sampler(sampler: str, schedule: Schedule, nfe: int) -> None:
    """One-line ConfigErrors: an unknown sampler, NFE < 1, flow_euler on a schedule that is not a rectified flow."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    check_steps(nfe, "nfe")
    if sampler == "flow_euler" and not isinstance(schedule, RectifiedFlow):
        raise ConfigError(f"sampler flow_euler integrates a rectified flow; the schedule is {schedule.name!r}")


def sampler_steps(sampler: str, nfe: int) -> int:
    """The number of grid intervals a sampler takes for `nfe` evaluations."""
    return math.ceil((nfe + 1) / 2) if sampler == "heun" else nfe


def consistency_grid(schedule: Schedule, steps: int) -> np.ndarray:
    """`steps + 1` times from the noise end down to a consistency function's boundary time (float64 numpy).

    EDM: `steps + 1` Karras sigmas from sigma_max down to sigma_min (its own grid without the final 0), since
    f(x, sigma_min) = x; VP and flow: `schedule.timesteps(steps)`, uniform down to 0. The k-step grid is every
    (N / k)-th point of the N-step one. Multistep consistency sampling evaluates f at the first `steps` of them: at
    the boundary f is the identity, and an evaluation spent there would be wasted (with EDM's own grid, 2 steps were
    f(x_T, sigma_max) then x + 0.002 z).
    """
    check_steps(steps)
    if isinstance(schedule, EDM):
        return schedule.timesteps(steps + 1)[:-1]
    return schedule.timesteps(steps)


def sample_grid(sampler: str, schedule: Schedule, nfe: int, timesteps=None) -> np.ndarray:
    """The sampler's time grid (float64 numpy): `steps + 1` points from the noise end to the data end (`consistency`:
    to the boundary, `consistency_grid`)."""
    steps = sampler_steps(sampler, nfe)
    if timesteps is not None:
        grid = np.asarray(timesteps, np.float64)
    else:
        grid = consistency_grid(schedule, steps) if sampler == "consistency" else schedule.timesteps(steps)
    if grid.shape != (steps + 1,):
        raise ConfigError(f"timesteps: sampler {sampler} with nfe={nfe} needs {steps + 1} times, got {grid.shape}")
    if np.any(np.diff(grid) >= 0):
        raise ConfigError("timesteps: expected strictly decreasing times (noise end first)")
    return grid


def sample(
    denoise_fn: DenoiseFn,
    x_T,
    schedule: Schedule,
    nfe: int,
    *,
    sampler: str = "heun",
    rng=None,
    eta: float = 0.0,
    timesteps=None,
):
    """Integrate from `x_T` (at the grid's first time) to the data end with exactly `nfe` calls of `denoise_fn`."""
    check_sampler(sampler, schedule, nfe)
    if (sampler in STOCHASTIC or (sampler == "ddim" and eta)) and rng is None:
        raise ConfigError(f"sampler {sampler}{' with eta > 0' if eta else ''} needs an rng")
    grid = sample_grid(sampler, schedule, nfe, timesteps)
    if sampler in ("euler", "flow_euler"):
        return _euler(denoise_fn, x_T, schedule, grid)
    if sampler == "heun":
        return _heun(denoise_fn, x_T, schedule, grid, corrections=nfe - (len(grid) - 1))
    if sampler == "ddim":
        return _ddim(denoise_fn, x_T, schedule, grid, eta, rng)
    if sampler == "dpmpp_2m":
        return _dpmpp_2m(denoise_fn, x_T, schedule, grid)
    return _consistency(denoise_fn, x_T, schedule, grid[:-1], rng)


def _intervals(grid):
    """(t_i, t_{i+1}) pairs as float32 device arrays for a scan."""
    return jnp.asarray(grid[:-1], jnp.float32), jnp.asarray(grid[1:], jnp.float32)


def _velocity(denoise_fn, schedule, x, t):
    return schedule.velocity_from_x0(x, t, denoise_fn(x, t))


def _euler(denoise_fn, x, schedule, grid):
    def step(x, ts):
        t, s = ts
        return x + (s - t) * _velocity(denoise_fn, schedule, x, t), None

    return jax.lax.scan(step, x, _intervals(grid))[0]


def _heun(denoise_fn, x, schedule, grid, *, corrections: int):
    """Heun (trapezoidal) steps on the first `corrections` intervals, Euler on the rest."""

    def heun_step(x, ts):
        t, s = ts
        velocity = _velocity(denoise_fn, schedule, x, t)
        euler = x + (s - t) * velocity
        return x + (s - t) * 0.5 * (velocity + _velocity(denoise_fn, schedule, euler, s)), None

    x = jax.lax.scan(heun_step, x, _intervals(grid[: corrections + 1]))[0]
    return _euler(denoise_fn, x, schedule, grid[corrections:])


def _ddim(denoise_fn, x, schedule, grid, eta, rng):
    keys = jax.random.split(rng, len(grid) - 1) if eta else jnp.zeros((len(grid) - 1,), jnp.uint32)

    def step(x, inputs):
        t, s, key = inputs
        noise = jax.random.normal(key, x.shape, x.dtype) if eta else None
        return ddim_step(schedule, x, t, s, denoise_fn(x, t), eta=eta, noise=noise).astype(x.dtype), None

    return jax.lax.scan(step, x, (*_intervals(grid), keys))[0]


def dpmpp_2m_coefficients(schedule: Schedule, grid) -> dict[str, np.ndarray]:
    """Per-interval numpy coefficients of DPM-Solver++(2M): x_{i+1} = ratio x_i + data (cur x0_i + prev x0_{i-1})."""
    with jax.ensure_compile_time_eval():  # constants, also when called under jit
        alpha = np.array([float(schedule.alpha(t)) for t in grid], np.float64)
        sigma = np.array([float(schedule.sigma(t)) for t in grid], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # log-SNR: +inf where sigma = 0, -inf where alpha = 0
        h = lam[1:] - lam[:-1]
        ratio = sigma[1:] / sigma[:-1]
        decay = np.where(np.isfinite(h), np.exp(-np.where(np.isfinite(h), h, 0.0)), 0.0)  # e^{-h}; 0 when h = inf
    prev = np.zeros(len(h))
    for i in range(1, len(h)):
        if np.isfinite(h[i]) and np.isfinite(h[i - 1]) and h[i - 1] > 0:
            prev[i] = -h[i] / (2.0 * h[i - 1])  # -1 / (2 r_i)
    return {"ratio": ratio, "data": alpha[1:] * (1.0 - decay), "cur": 1.0 - prev, "prev": prev}


def _dpmpp_2m(denoise_fn, x, schedule, grid):
    coefficients = {k: jnp.asarray(v, jnp.float32) for k, v in dpmpp_2m_coefficients(schedule, grid).items()}

    def step(carry, inputs):
        x, previous = carry
        t, c = inputs
        x0 = denoise_fn(x, t)
        data = c["cur"] * x0 + c["prev"] * previous
        return (c["ratio"] * x + c["data"] * data, x0), None

    init = (x, jnp.zeros_like(x))
    return jax.lax.scan(step, init, (jnp.asarray(grid[:-1], jnp.float32), coefficients))[0][0]


def _consistency(denoise_fn, x, schedule, times, rng):
    """x = f(x_T, tau_0); then x = f(alpha(tau) x + sigma(tau) z, tau) for the later taus."""
    x = denoise_fn(x, jnp.float32(times[0]))
    if len(times) == 1:
        return x
    keys = jax.random.split(rng, len(times) - 1)

    def step(x, inputs):
        tau, key = inputs
        noisy = schedule.add_noise(x, jax.random.normal(key, x.shape, x.dtype), tau)
        return denoise_fn(noisy, tau), None

    return jax.lax.scan(step, x, (jnp.asarray(times[1:], jnp.float32), keys))[0]


def check_guidance(model, guidance_scale, labels_given: bool = True) -> None:
    """One-line ConfigErrors: guidance (scale != 1) on an unconditional denoiser, or without labels."""
    if guidance_scale is None or (isinstance(guidance_scale, int | float) and guidance_scale == 1.0):
        return
    if not getattr(model, "num_classes", 0) and not getattr(model, "guidance_conditioning", False):
        raise ConfigError(
            f"guidance_scale={guidance_scale}: the denoiser is unconditional (num_classes = 0); classifier-free "
            "guidance needs a class-conditional model"
        )
    if not labels_given:
        raise ConfigError(f"guidance_scale={guidance_scale}: classifier-free guidance needs labels")


def guided_denoiser(model, schedule: Schedule, labels=None, guidance_scale=1.0) -> DenoiseFn:
    """`denoise_fn(x, t) -> x0` of a denoiser module with classifier-free guidance (Ho & Salimans 2022):

        x0_guided = x0(x, t, null) + guidance_scale (x0(x, t, labels) - x0(x, t, null))

    scale 1: the conditional model (one pass, no null branch); 0: the unconditional one; Ho & Salimans' w is
    `guidance_scale - 1` ((1 + w) x_c - w x_u). Guiding x0 equals guiding eps or the velocity (each is affine in the
    raw output with the same coefficients for both branches). A model with `guidance_conditioning` takes the scale
    as an input instead, in one pass."""
    check_guidance(model, guidance_scale, labels is not None)
    if getattr(model, "guidance_conditioning", False):
        return lambda x, t: predict(schedule, model, x, t, labels, guidance_scale).x0
    if guidance_scale is None or (isinstance(guidance_scale, int | float) and guidance_scale == 1.0):
        return lambda x, t: predict(schedule, model, x, t, labels).x0
    null = jnp.full_like(jnp.asarray(labels, jnp.int32), model.null_label)

    def denoise(x, t):
        both = predict(schedule, model, jnp.concatenate([x, x]), t, jnp.concatenate([labels, null])).x0
        conditional, unconditional = jnp.split(both, 2)
        return unconditional + guidance_scale * (conditional - unconditional)

    return denoise


def make_sampler(
    model,
    schedule: Schedule,
    *,
    sampler: str = "heun",
    nfe: int = 35,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    timesteps=None,
):
    """(`run(params, x_T, labels, rng) -> samples`, jitted, and the model's params). `labels` may be None for an
    unconditional draw (or the null class); every input error is raised here, before compilation."""
    check_sampler(sampler, schedule, nfe)
    sample_grid(sampler, schedule, nfe, timesteps)
    check_guidance(model, guidance_scale)
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, x_T, labels, rng):
        denoiser = nnx.merge(graphdef, params)
        denoise_fn = guided_denoiser(denoiser, schedule, labels, guidance_scale)
        return sample(denoise_fn, x_T, schedule, nfe, sampler=sampler, rng=rng, eta=eta, timesteps=timesteps)

    return run, params


def draw_from_prior(run, schedule: Schedule, params, sample_shape, *, conditional: bool):
    """`draw(key, labels) -> samples`: x_T from the schedule's prior for `labels.shape[0]` samples of
    `sample_shape`, then `run(params, x_T, labels or None, rng)` (a sampler of `make_sampler`), jitted as one."""

    @jax.jit
    def sample_from(params, key, labels):
        noise_key, sampler_key = jax.random.split(key)
        x_T = schedule.prior(noise_key, (labels.shape[0], *sample_shape))
        return run(params, x_T, labels if conditional else None, sampler_key)

    return lambda key, labels: sample_from(params, key, labels)

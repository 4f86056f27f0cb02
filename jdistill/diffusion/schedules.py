"""Noise schedules and parameterisations of diffusion and flow models, as pure functions (docs/diffusion.md).

Every family is a Gaussian path from data to noise,

    x_t = alpha(t) x0 + sigma(t) eps,        eps ~ N(0, I),

and differs in what `t` means, in alpha / sigma, and in what the network outputs (its *raw* output):

| family (`name`)          | t                | alpha(t)      | sigma(t)          | data / noise end | raw output   |
| ------------------------ | ---------------- | ------------- | ----------------- | ---------------- | ------------ |
| `EDM` ("edm")            | sigma itself     | 1             | t                 | 0 / sigma_max    | F (below)    |
| `VP` ("vp")              | time in [0, 1]   | sqrt(abar(t)) | sqrt(1 - abar(t)) | 0 / 1            | eps, x0 or v |
| `RectifiedFlow` ("flow") | time in [0, 1]   | 1 - t         | t                 | 0 / 1            | eps - x0     |

- EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"):
  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
  c_noise = ln(sigma) / 4, sd = `sigma_data`; training sigmas ln sigma ~ N(p_mean, p_std^2); loss weight
  lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2; sampling sigmas (rho = 7)
  sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < n, then 0.
- VP (Ho et al. 2020 "DDPM"; Song et al. 2021 "Score-Based Generative Modeling through SDEs"; Song et al. 2021
  "DDIM"): the continuous-time limit of DDPM's linear betas, abar(t) = exp(-(beta_min t + (beta_max - beta_min)
  t^2 / 2)) with beta_min = 0.1, beta_max = 20 (discrete DDPM with N = 1000 steps and betas 1e-4 .. 0.02 has
  abar_i = abar((i + 1) / N) to first order; `ddpm_alpha_bars` gives the discrete table). Sampling times are
  uniform from 1 to 0. The DDIM update is `ddim_step`.
- Rectified flow / flow matching (Liu et al. 2023 "Flow Straight and Fast"; Lipman et al. 2023 "Flow Matching for
  Generative Modeling"): x_t = (1 - t) x0 + t eps, the network predicts the velocity dx_t/dt = eps - x0; sampling
  integrates dx/dt = v from t = 1 to t = 0 on a uniform grid.

Predictions, for every family (`to_*` below; `x` is x_t):
- `x0`: the denoised estimate (an estimate of E[x0 | x_t]).
- `eps` = (x - alpha x0) / sigma.
- `velocity` = d x_t / dt along the path = alpha'(t) x0 + sigma'(t) eps; with the estimates plugged in it is the
  probability-flow ODE's drift dx/dt (EDM: dx/dsigma = (x - x0) / sigma; rectified flow: eps - x0). Samplers
  integrate it from the noise end to the data end.
- VP's optional "v" raw output is Salimans & Ho's v = alpha eps - sigma x0 ("Progressive Distillation"), which is
  not the ODE velocity (it is d x_phi / d phi for the angle phi = atan(sigma / alpha)).

A denoiser module is called as `model(x, t, labels[, guidance_scale]) -> raw` with x = x_t and t in the schedule's
own units; it applies `schedule.model_inputs(x, t)` (EDM's c_in and c_noise) itself, and `schedule.to_x0(x, t,
raw)` turns its output into x0 (`predict` does both). Schedules are frozen dataclasses (hashable, static under
jit); their time grids (`timesteps`) are numpy arrays fixed before compilation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.errors import ConfigError


def expand_to(coefficient, x):
    """`coefficient` (a scalar or `[batch]`) reshaped to broadcast against `x [batch, ...]`."""
    coefficient = jnp.asarray(coefficient, jnp.result_type(float))
    return coefficient.reshape(coefficient.shape + (1,) * (x.ndim - coefficient.ndim))


class Prediction(NamedTuple):
    """One denoiser evaluation in every parameterisation: `x0`, `eps` and the ODE `velocity` (dx/dt)."""

    x0: jax.Array
    eps: jax.Array
    velocity: jax.Array


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A Gaussian path x_t = alpha(t) x0 + sigma(t) eps and its network parameterisation (subclasses)."""

    name: ClassVar[str] = "schedule"

    # ---- the path ----
    @property
    def t_max(self) -> float:
        """The noise end of the path (sampling starts here)."""
        raise NotImplementedError

    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def d_alpha(self, t):
        """d alpha / dt."""
        raise NotImplementedError

    def d_sigma(self, t):
        """d sigma / dt."""
        raise NotImplementedError

    def add_noise(self, x0, eps, t):
        """x_t = alpha(t) x0 + sigma(t) eps."""
        return expand_to(self.alpha(t), x0) * x0 + expand_to(self.sigma(t), x0) * eps

    def prior(self, rng, shape, dtype=jnp.float32):
        """A draw of x at `t_max`: sigma(t_max) * N(0, I) (alpha(t_max) x0 is taken as negligible)."""
        return self.sigma(self.t_max) * jax.random.normal(rng, shape, dtype)

    # ---- conversions between predictions (any family) ----
    def eps_from_x0(self, x, t, x0):
        """eps = (x - alpha x0) / sigma."""
        return (x - expand_to(self.alpha(t), x) * x0) / expand_to(self.sigma(t), x)

    def x0_from_eps(self, x, t, eps):
        """x0 = (x - sigma eps) / alpha."""
        return (x - expand_to(self.sigma(t), x) * eps) / expand_to(self.alpha(t), x)

    def velocity_from_x0(self, x, t, x0):
        """dx/dt = alpha' x0 + sigma' eps with eps = (x - alpha x0) / sigma."""
        return expand_to(self.d_alpha(t), x) * x0 + expand_to(self.d_sigma(t), x) * self.eps_from_x0(x, t, x0)

    def x0_from_velocity(self, x, t, velocity):
        """x0 = (sigma' x - sigma v) / (alpha sigma' - alpha' sigma), inverting `velocity_from_x0`."""
        a, s = expand_to(self.alpha(t), x), expand_to(self.sigma(t), x)
        da, ds = expand_to(self.d_alpha(t), x), expand_to(self.d_sigma(t), x)
        return (ds * x - s * velocity) / (a * ds - da * s)

    def from_x0(self, x, t, x0) -> Prediction:
        """x0, eps and velocity from an x0 estimate."""
        return Prediction(x0, self.eps_from_x0(x, t, x0), self.velocity_from_x0(x, t, x0))

    # ---- the network's parameterisation ----
    def model_inputs(self, x, t):
        """(network input, noise conditioning) for x_t at time t; default (x, t)."""
        return x, t

    def to_x0(self, x, t, raw):
        """The x0 estimate from the network's raw output."""
        raise NotImplementedError

    def raw_target(self, x0, eps, t):
        """The raw output that gives x0 exactly at x_t = add_noise(x0, eps, t): the regression target."""
        raise NotImplementedError

    # ---- training and sampling times ----
    def sample_t(self, rng, shape):
        """Training times."""
        raise NotImplementedError

    def timesteps(self, steps: int) -> np.ndarray:
        """`steps + 1` sampling times (float64 numpy), from `t_max` down to the data end (its last entry)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
    """Karras et al. (2022) preconditioning: t is sigma; D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    name: ClassVar[str] = "edm"

    def __post_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max or self.sigma_data <= 0 or self.rho <= 0 or self.p_std < 0:
            raise ConfigError(
                "schedule edm: expected 0 < sigma_min < sigma_max, sigma_data > 0, rho > 0 and p_std >= 0"
            )

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        return jnp.asarray(t, jnp.result_type(float))

    def d_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(float)))

    def d_sigma(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def c_skip(self, sigma):
        """sd^2 / (sigma^2 + sd^2): 1 at sigma = 0 (the identity), 0 as sigma -> inf."""
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        """sigma sd / sqrt(sigma^2 + sd^2): 0 at sigma = 0."""
        return sigma * self.sigma_data / jnp.sqrt(sigma**2 + self.sigma_data**2)

    def c_in(self, sigma):
        """1 / sqrt(sigma^2 + sd^2): the network input has unit variance when the data's is sd^2."""
        return 1.0 / jnp.sqrt(sigma**2 + self.sigma_data**2)

    def c_noise(self, sigma):
        """ln(sigma) / 4 (sigma is floored at 1e-20 so that sigma = 0 stays finite)."""
        return jnp.log(jnp.maximum(sigma, 1e-20)) / 4.0

    def loss_weight(self, sigma):
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2: unit weight on the raw output."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def model_inputs(self, x, t):
        sigma = jnp.asarray(t, jnp.result_type(float))
        return expand_to(self.c_in(sigma), x) * x, self.c_noise(sigma)

    def to_x0(self, x, t, raw):
        sigma = jnp.asarray(t, jnp.result_type(float))
        return expand_to(self.c_skip(sigma), x) * x + expand_to(self.c_out(sigma), x) * raw

    def raw_target(self, x0, eps, t):
        """(x0 - c_skip x_t) / c_out: EDM's effective training target for F."""
        sigma = jnp.asarray(t, jnp.result_type(float))
        x = self.add_noise(x0, eps, sigma)
        return (x0 - expand_to(self.c_skip(sigma), x) * x) / expand_to(self.c_out(sigma), x)

    def sample_t(self, rng, shape):
        """ln sigma ~ N(p_mean, p_std^2)."""
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(rng, shape))

    def timesteps(self, steps: int) -> np.ndarray:
        """Karras et al. sigmas: `steps` values from sigma_max to sigma_min spaced uniformly in sigma^(1/rho), then 0
        (one step: sigma_max, 0)."""
        check_steps(steps)
        i = np.arange(steps, dtype=np.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        ramp = i / (steps - 1) if steps > 1 else i
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return np.append(sigmas, 0.0)


@dataclasses.dataclass(frozen=True)
class VP(Schedule):
    """Variance-preserving diffusion (DDPM / DDIM) in continuous time t in [0, 1]; abar(t) = exp(-int_0^t beta)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    prediction: str = "eps"  # raw output: "eps", "x0" or "v" (Salimans & Ho's alpha eps - sigma x0)
    t_min: float = 1e-3  # smallest training time (sampling ends at t = 0 exactly)
    name: ClassVar[str] = "vp"

    def __post_init__(self):
        if self.prediction not in ("eps", "x0", "v"):
            raise ConfigError(f"schedule vp: prediction {self.prediction!r} is not one of eps, x0, v")
        if not 0.0 <= self.beta_min <= self.beta_max or self.beta_max <= 0 or not 0.0 <= self.t_min < 1.0:
            raise ConfigError("schedule vp: expected 0 <= beta_min <= beta_max, beta_max > 0, 0 <= t_min < 1")

    @property
    def t_max(self) -> float:
        return 1.0

    def log_alpha_bar(self, t):
        """log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)."""
        t = jnp.asarray(t, jnp.result_type(float))
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def beta(self, t):
        """beta(t) = beta_min + (beta_max - beta_min) t = -d log abar / dt."""
        return self.beta_min + (self.beta_max - self.beta_min) * jnp.asarray(t, jnp.result_type(float))

    def alpha(self, t):
        return jnp.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self.log_alpha_bar(t)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return 0.5 * self.beta(t) * jnp.exp(self.log_alpha_bar(t)) / self.sigma(t)

    def to_x0(self, x, t, raw):
        if self.prediction == "x0":
            return raw
        if self.prediction == "eps":
            return self.x0_from_eps(x, t, raw)
        return expand_to(self.alpha(t), x) * x - expand_to(self.sigma(t), x) * raw  # v: x0 = alpha x - sigma v

    def raw_target(self, x0, eps, t):
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return eps
        return expand_to(self.alpha(t), x0) * eps - expand_to(self.sigma(t), x0) * x0

    def sample_t(self, rng, shape):
        """t ~ U(t_min, 1)."""
        return jax.random.uniform(rng, shape, minval=self.t_min, maxval=1.0)

    def timesteps(self, steps: int) -> np.ndarray:
        """Uniform times 1, 1 - 1/steps, ..., 0."""
        check_steps(steps)
        return np.linspace(1.0, 0.0, steps + 1)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching: x_t = (1 - t) x0 + t eps; the network predicts the velocity eps - x0."""

    time_sampling: str = "uniform"  # training times: "uniform" U(0, 1) or "logit_normal" (Esser et al. 2024)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    name: ClassVar[str] = "flow"

    def __post_init__(self):
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"schedule flow: time_sampling {self.time_sampling!r} is not uniform or logit_normal")

    @property
    def t_max(self) -> float:
        return 1.0

    def alpha(self, t):
        return 1.0 - jnp.asarray(t, jnp.result_type(float))

    def sigma(self, t):
        return jnp.asarray(t, jnp.result_type(float))

    def d_alpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def d_sigma(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))

    def to_x0(self, x, t, raw):
        """x0 = x - t v."""
        return x - expand_to(t, x) * raw

    def raw_target(self, x0, eps, t):
        """v = eps - x0."""
        del t
        return eps - x0

    def sample_t(self, rng, shape):
        if self.time_sampling == "uniform":
            return jax.random.uniform(rng, shape)
        return jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(rng, shape))

    def timesteps(self, steps: int) -> np.ndarray:
        """Uniform times 1, 1 - 1/steps, ..., 0."""
        check_steps(steps)
        return np.linspace(1.0, 0.0, steps + 1)


SCHEDULES: dict[str, type[Schedule]] = {"edm": EDM, "vp": VP, "flow": RectifiedFlow}


def check_steps(steps: int, what: str = "steps") -> None:
    """A one-line error unless `steps` is an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ConfigError(f"{what}: expected an integer >= 1, got {steps!r}")


def schedule_named(name: str, **options) -> Schedule:
    """The schedule `name` ("edm", "vp", "flow") with `options` (its dataclass fields); one-line errors otherwise."""
    if name not in SCHEDULES:
        raise ConfigError(f"schedule: unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"schedule {name}: unknown option {unknown[0]!r}; options: {', '.join(sorted(fields))}")
    return cls(**options)


def predict(schedule: Schedule, model, x, t, labels=None, guidance_scale=None) -> Prediction:
    """One evaluation of `model(x, t, labels[, guidance_scale])` as x0, eps and velocity (t broadcast to `[batch]`)."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    raw = model(x, t, labels) if guidance_scale is None else model(x, t, labels, guidance_scale)
    return schedule.from_x0(x, t, schedule.to_x0(x, t, raw))


def ddim_step(schedule: Schedule, x, t, s, x0, eps=None, *, eta: float = 0.0, noise=None):
    """DDIM (Song et al. 2021) from time t to s < t: x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with
    c = eta sigma_s / sigma_t sqrt(1 - (alpha_t sigma_s / (sigma_t alpha_s))^2) (eta = 0: deterministic; eta = 1:
    DDPM's ancestral step). `eps` defaults to `schedule.eps_from_x0(x, t, x0)`."""
    eps = schedule.eps_from_x0(x, t, x0) if eps is None else eps
    alpha_s, sigma_s = expand_to(schedule.alpha(s), x), expand_to(schedule.sigma(s), x)
    if eta == 0.0:
        return alpha_s * x0 + sigma_s * eps
    alpha_t, sigma_t = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
    ratio = (alpha_t * sigma_s) / (sigma_t * alpha_s)
    c = eta * sigma_s * jnp.sqrt(jnp.maximum(1.0 - ratio**2, 0.0))
    return alpha_s * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * eps + c * noise


def ddpm_alpha_bars(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Discrete DDPM (Ho et al. 2020): linear betas and abar_i = prod_{j <= i} (1 - beta_j), `[num_steps]`."""
    check_steps(num_steps, "num_steps")
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def log_snr(schedule: Schedule, t) -> float:
    """lambda(t) = log(alpha / sigma) as a Python float (inf at the data end, -inf where alpha = 0)."""
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha / sigma)

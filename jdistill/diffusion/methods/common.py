"""What every trajectory-distillation objective shares: the Gaussian-path algebra and per-example distances.

Every diffusion family the library trains writes a noisy sample as x_t = alpha_t x0 + sigma_t eps:
EDM has alpha = 1, sigma = the noise level; variance-preserving (DDPM / DDIM) has alpha^2 + sigma^2 = 1; rectified
flow has alpha = 1 - t, sigma = t. The methods here take `alpha`, `sigma` as arrays (broadcastable against the
sample, typically `[batch, 1, ...]`), so one formula serves every family. A denoiser is a callable
`x0_fn(x, t) -> x0_hat` (its conditioning closed over).

Shapes: samples `[batch, ...]`; per-example scalars `[batch]`; `expand` lifts `[batch]` to broadcast against a sample.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

METRICS = ("l2", "l1", "pseudo_huber")
# iCT (Song & Dhariwal 2023): the pseudo-Huber constant c = 0.00054 sqrt(d) for a sample of d numbers.
PSEUDO_HUBER_SCALE = 0.00054


def expand(values: ArrayLike, sample: ArrayLike) -> Array:
    """Per-example `values [batch]` (or a scalar) reshaped to `[batch, 1, ...]` to broadcast against `sample`."""
    values = jnp.asarray(values)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (jnp.ndim(sample) - values.ndim))


def eps_from_x0(x_t: ArrayLike, x0_hat: ArrayLike, alpha_t: ArrayLike, sigma_t: ArrayLike) -> Array:
    """The noise implied by a data prediction: eps_hat = (x_t - alpha_t x0_hat) / sigma_t."""
    return (jnp.asarray(x_t) - alpha_t * jnp.asarray(x0_hat)) / sigma_t


def ddim_step(
    x_t: ArrayLike, x0_hat: ArrayLike, alpha_t: ArrayLike, sigma_t: ArrayLike, alpha_s: ArrayLike, sigma_s: ArrayLike
) -> Array:
    """One deterministic DDIM step t -> s: x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t.

    Song, Meng & Ermon 2021 (DDIM). It is the first-order exponential integrator of the probability-flow ODE in
    data-prediction form (Lu et al. 2022, DPM-Solver++): with lambda = log(alpha / sigma) and h = lambda_s - lambda_t,
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0_hat, the same expression. For EDM (alpha = 1) it is the
    Euler step of dx/dsigma = (x - x0_hat) / sigma; for rectified flow the Euler step of the velocity
    v = (x_t - x0_hat) / t. s = t returns x_t exactly; sigma_s = 0 returns alpha_s x0_hat.
    """
    x_t, x0_hat = jnp.asarray(x_t), jnp.asarray(x0_hat)
    alpha_t, sigma_t, alpha_s, sigma_s = (jnp.asarray(v) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    return alpha_s * x0_hat + (sigma_s / sigma_t) * (x_t - alpha_t * x0_hat)


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

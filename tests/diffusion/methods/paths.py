"""Gaussian paths shared by the methods' tests: (alpha, sigma) of each family, and exact flows for Gaussian data."""

import jax.numpy as jnp
import numpy as np

FAMILIES = {
    "edm": lambda t: (jnp.ones_like(t), t),
    "vp": lambda t: (jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)),
    "flow": lambda t: (1.0 - t, t),
}
# Time ranges (largest noise, clean end) on which each family's grids are built in the tests.
RANGES = {"edm": (80.0, 0.002), "vp": (0.999, 0.0), "flow": (1.0, 0.0)}


def np_alpha_sigma(family, t):
    t = np.asarray(t, np.float64)
    if family == "edm":
        return np.ones_like(t), t
    if family == "vp":
        return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
    return 1.0 - t, t


def np_ddim(x_t, x0, a_t, s_t, a_s, s_s):
    return a_s * x0 + s_s / s_t * (x_t - a_t * x0)


def gaussian_x0(scale, family):
    """The exact denoiser E[x0 | x_t] for data N(0, scale^2 I) under `family`'s path: x alpha s^2 / (alpha^2 s^2 +
    sigma^2)."""

    def x0_fn(x, t):
        alpha, sigma = FAMILIES[family](t)
        alpha, sigma = alpha.reshape(-1, *([1] * (x.ndim - 1))), sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * alpha * scale**2 / (alpha**2 * scale**2 + sigma**2)

    return x0_fn


def gaussian_flow_map(x, t, s, scale, family):
    """The exact probability-flow ODE map t -> s for data N(0, scale^2 I): x_s = x_t sqrt(a_s^2 s^2 + sig_s^2) /
    sqrt(a_t^2 s^2 + sig_t^2) (the marginal std ratio; the flow of a Gaussian is linear)."""
    a_t, s_t = FAMILIES[family](jnp.asarray(t))
    a_s, s_s = FAMILIES[family](jnp.asarray(s))
    ratio = jnp.sqrt(a_s**2 * scale**2 + s_s**2) / jnp.sqrt(a_t**2 * scale**2 + s_t**2)
    return x * ratio.reshape(-1, *([1] * (x.ndim - 1)))

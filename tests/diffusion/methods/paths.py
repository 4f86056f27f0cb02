"""Schedules shared by the methods' tests, numpy references of their coefficients, and exact flows of Gaussian data."""

import jax.numpy as jnp
import numpy as np

from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow, expand_to

FAMILIES = {"edm": EDM(), "vp": VP(), "flow": RectifiedFlow()}
# Time ranges (largest noise, clean end) on which each family's grids are built in the tests.
RANGES = {"edm": (80.0, 0.002), "vp": (0.999, 0.0), "flow": (1.0, 0.0)}


def np_alpha_sigma(family, t):
    """(alpha, sigma) in float64 numpy, written from the families' definitions (EDM; VP with linear betas 0.1 .. 20)."""
    t = np.asarray(t, np.float64)
    if family == "edm":
        return np.ones_like(t), t
    if family == "vp":
        log_abar = -(0.1 * t + 0.5 * 19.9 * t**2)
        return np.exp(0.5 * log_abar), np.sqrt(-np.expm1(log_abar))
    return 1.0 - t, t


def np_ddim(x_t, x0, a_t, s_t, a_s, s_s):
    return a_s * x0 + s_s / s_t * (x_t - a_t * x0)


def gaussian_x0(scale, family):
    """The exact denoiser E[x0 | x_t] for data N(0, scale^2 I): x alpha s^2 / (alpha^2 s^2 + sigma^2)."""
    schedule = FAMILIES[family]

    def x0_fn(x, t):
        alpha, sigma = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
        return x * alpha * scale**2 / (alpha**2 * scale**2 + sigma**2)

    return x0_fn


def gaussian_flow_map(x, t, s, scale, family):
    """The exact probability-flow ODE map t -> s for data N(0, scale^2 I): x_s = x_t std(s) / std(t), std the
    marginal's (the flow of a Gaussian is linear)."""
    schedule = FAMILIES[family]
    std = lambda time: jnp.sqrt(schedule.alpha(time) ** 2 * scale**2 + schedule.sigma(time) ** 2)
    return x * expand_to(std(jnp.asarray(s)) / std(jnp.asarray(t)), x)

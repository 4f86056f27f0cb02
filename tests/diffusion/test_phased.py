"""Phased DMD's pure parts (jdistill.diffusion.methods.phased): score matching within a subinterval is unbiased, its
limits, the phases and their times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import dmd, phased
from jdistill.diffusion.schedules import EDM, RectifiedFlow


@pytest.mark.parametrize("schedule,s,t", [(EDM(), 1.0, 2.0), (RectifiedFlow(), 0.3, 0.6)])
def test_the_subinterval_target_has_mean_e_x0_given_x_t(schedule, s, t):
    """Data x0 ~ N(m, v): the least-squares line of the target on x_t is E[x0 | x_t] = m + c (x_t - alpha_t m),
    c = alpha_t v / (alpha_t^2 v + sigma_t^2), although only x_s (not x0) enters the target."""
    m, v, n = 0.7, 0.25, 400_000
    x0_key, s_key, t_key = jax.random.split(jax.random.key(0), 3)
    x0 = m + np.sqrt(v) * jax.random.normal(x0_key, (n, 1))
    s_b, t_b = jnp.full((n,), s), jnp.full((n,), t)
    x_s = dmd.renoise(schedule, x0, s_b, jax.random.normal(s_key, (n, 1)))
    eps = jax.random.normal(t_key, (n, 1))
    x_t = phased.diffuse_from(schedule, x_s, s_b, t_b, eps)
    target, weight = phased.subinterval_target(schedule, x_t, s_b, t_b, eps)
    alpha_t, sigma_t = float(schedule.alpha(jnp.float32(t))), float(schedule.sigma(jnp.float32(t)))
    # x_t has the marginal of the full path at t
    assert float(jnp.var(x_t)) == pytest.approx(alpha_t**2 * v + sigma_t**2, rel=0.01)
    slope, intercept = np.polyfit(np.asarray(x_t)[:, 0], np.asarray(target)[:, 0], 1)
    c = alpha_t * v / (alpha_t**2 * v + sigma_t**2)
    assert slope == pytest.approx(c, abs=0.01)
    assert intercept == pytest.approx(m - c * alpha_t * m, abs=0.01)
    assert 0 < float(weight[0]) < 1


def test_at_the_data_end_the_subinterval_loss_is_plain_denoising():
    schedule = EDM()
    x0 = jax.random.normal(jax.random.key(1), (4, 3))
    eps = jax.random.normal(jax.random.key(2), (4, 3))
    s, t = jnp.zeros(4), jnp.asarray([0.1, 1.0, 5.0, 40.0])
    x_t = phased.diffuse_from(schedule, x0, s, t, eps)
    np.testing.assert_allclose(x_t, x0 + t[:, None] * eps, rtol=1e-6)
    target, weight = phased.subinterval_target(schedule, x_t, s, t, eps)
    np.testing.assert_allclose(target, x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weight, 1.0, rtol=1e-5)
    pred = x0 + 0.1
    np.testing.assert_allclose(phased.subinterval_score_loss(pred, target, weight), 0.01, rtol=1e-3)
    # the phase's matching loss at x_s = x0 is DMD's, with DMD's gradient
    real, fake = jax.random.normal(jax.random.key(3), (2, 4, 3))
    np.testing.assert_allclose(
        phased.phase_matching_loss(x0, x0, real, fake), dmd.distribution_matching_loss(x0, real, fake), rtol=1e-6
    )
    x_s = x0 + 0.5 * eps
    grad = jax.grad(lambda x: phased.phase_matching_loss(x, x0, real, fake))(x_s)
    np.testing.assert_allclose(grad, dmd.distribution_matching_gradient(x0, real, fake) / x0.size, rtol=1e-5)


def test_phases_and_their_subinterval_times():
    np.testing.assert_array_equal(phased.phase_of(jnp.arange(0, 120, 10), 100, 2), [0] * 5 + [1] * 7)
    schedule = EDM()
    times = dmd.generator_times(schedule, 3)
    ends = phased.boundaries(times)
    assert ends[-1] == 0.0 and np.allclose(ends[:-1], times[1:])
    phase = jnp.repeat(jnp.arange(3), 500)
    t = np.asarray(phased.subinterval_times(schedule, jax.random.key(0), phase, times))
    for k in range(3):
        inside = t[500 * k : 500 * (k + 1)]
        assert inside.max() <= times[k] * (1 + 1e-6) and inside.min() > ends[k], k

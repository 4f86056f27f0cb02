"""DMD's pure objectives against numpy and their limiting cases (jdistill.diffusion.methods.dmd)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import dmd
from jdistill.diffusion.schedules import EDM, RectifiedFlow


def test_distribution_matching_gradient_is_the_normalised_score_difference():
    rng = np.random.default_rng(0)
    x, real, fake = (rng.standard_normal((3, 4, 2)).astype(np.float32) for _ in range(3))
    value, grad = jax.value_and_grad(lambda x: dmd.distribution_matching_loss(x, real, fake))(jnp.asarray(x))
    weight = np.abs(x - real).mean(axis=(1, 2), keepdims=True)
    expected = (fake - real) / weight
    np.testing.assert_allclose(grad, expected / x.size, rtol=1e-5)  # dL/dx = grad / numbers
    np.testing.assert_allclose(value, 0.5 * np.mean(expected**2), rtol=1e-5)
    # the scores agree: no gradient
    assert float(jnp.abs(jax.grad(lambda x: dmd.distribution_matching_loss(x, real, real))(x)).max()) == 0.0


def test_distribution_matching_moves_a_gaussian_generator_to_the_teachers_mean():
    """Data N(mu_r, s^2) and generator N(mu_g, s^2) with exact x0 predictors (EDM path):
    E[x0 | x_t] = mu + k (x_t - mu), k = s^2 / (s^2 + sigma^2). The DMD gradient w.r.t. the generator's shift is
    (1 - k)(mu_g - mu_r) mean(1 / |x - x0_real|), so gradient descent moves the generator to the data's mean."""
    mu_r, mu_g, s, sigma = 1.5, -0.5, 0.5, 1.0
    k = s**2 / (s**2 + sigma**2)
    z, eps = jax.random.normal(jax.random.key(0), (2, 4096, 1))

    def loss(shift):
        x = shift + s * z
        x_t = jax.lax.stop_gradient(x + sigma * eps)
        return dmd.distribution_matching_loss(x, mu_r + k * (x_t - mu_r), mu_g + k * (x_t - mu_g))

    grad = float(jax.grad(loss)(jnp.float32(mu_g)))
    assert grad < 0  # descent increases mu_g toward mu_r
    x = mu_g + s * np.asarray(z)
    weight = np.abs(x - (mu_r + k * (x + sigma * np.asarray(eps) - mu_r))).reshape(-1)
    assert grad == pytest.approx((1 - k) * (mu_g - mu_r) * np.mean(1 / weight), rel=1e-3)


def test_grid_times_and_generator_times():
    edm = EDM()
    grid = edm.timesteps(1000)[:-1]
    t = np.asarray(dmd.grid_times(edm, jax.random.key(0), 4096, 0.02, 0.98))
    assert t.max() <= grid[20] + 1e-4 and t.min() >= grid[979] - 1e-6
    assert len(np.unique(t)) > 500
    t = np.asarray(dmd.grid_times(edm, jax.random.key(0), 4096, 0.2, 1.0))  # SiD's t_max = 800: sigma <= grid[200]
    assert t.max() <= grid[200] + 1e-4 and t.min() < 0.01
    np.testing.assert_allclose(dmd.generator_times(edm, 1), [80.0])
    np.testing.assert_allclose(dmd.generator_times(edm, 1, 2.5), [2.5])
    np.testing.assert_allclose(dmd.generator_times(edm, 4), edm.timesteps(5)[:4])
    assert np.all(np.diff(dmd.generator_times(RectifiedFlow(), 4)) < 0)


def test_generate_and_backward_simulation():
    flow = RectifiedFlow()
    calls = []

    def x0_fn(x, t):
        calls.append(t)
        return 0.5 * x + 1.0

    z = jax.random.normal(jax.random.key(1), (3, 2))
    times = dmd.generator_times(flow, 3)
    one = dmd.generate(x0_fn, flow, z, times[:1], jax.random.key(0))
    np.testing.assert_allclose(one, x0_fn(z * flow.sigma(times[0]), times[0]), rtol=1e-6)
    rng = jax.random.key(2)
    three = dmd.generate(x0_fn, flow, z, times, rng)
    # step k's input is the sample after k steps re-noised to t_k (with the same noise keys)
    x_in, t = dmd.backward_simulated_input(x0_fn, flow, z, times, jnp.array([0, 1, 2]), rng)
    np.testing.assert_allclose(t, times.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(x_in[0], float(flow.sigma(times[0])) * z[0], rtol=1e-6)
    np.testing.assert_allclose(x0_fn(x_in[2:], t[2:]), three[2:], rtol=1e-5)


def test_one_step_limit_ignores_backward_simulation():
    flow = RectifiedFlow()
    z = jax.random.normal(jax.random.key(1), (3, 2))
    x_in, t = dmd.backward_simulated_input(lambda x, t: x, flow, z, [1.0], jnp.zeros(3, jnp.int32), jax.random.key(0))
    np.testing.assert_allclose(x_in, z)
    assert float(t[0]) == pytest.approx(1.0)


def test_class_log_likelihood_is_the_log_softmax_of_the_requested_class():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((5, 10)), np.array([0, 3, 9, 3, 1])
    expected = logits[np.arange(5), labels] - np.log(np.exp(logits).sum(axis=-1))
    np.testing.assert_allclose(dmd.class_log_likelihood(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)


def test_teacher_correction_limits():
    """Weight 0: the student's estimate; weight 1: the teacher's denoising of it re-noised to t; in between, linear."""
    edm = EDM()
    x0, eps = jax.random.normal(jax.random.key(0), (2, 3, 4))
    teacher = lambda x, t: 0.5 * x - 0.1 * t[:, None]
    x_t = x0 + 0.2 * eps
    np.testing.assert_allclose(dmd.teacher_corrected(x0, teacher, edm, 0.2, 0.0, eps), x0, rtol=1e-6)
    np.testing.assert_allclose(dmd.teacher_corrected(x0, teacher, edm, 0.2, 1.0, eps), 0.5 * x_t - 0.02, rtol=1e-5)
    half = dmd.teacher_corrected(x0, teacher, edm, 0.2, 0.25, eps)
    np.testing.assert_allclose(half, x0 + 0.25 * (0.5 * x_t - 0.02 - x0), rtol=1e-5, atol=1e-6)

"""EMD's E-step (jdistill.diffusion.methods.emd.langevin): it samples its target, K = 0 leaves the draw unchanged, and
noise cancellation removes exactly the noise injected into eps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import emd


def test_langevin_samples_a_gaussian_target():
    """Target N(mu, v) on both parts (without cancellation): after many small steps the draws have its mean and
    variance."""
    mu, v = jnp.asarray(1.5), jnp.asarray(0.5)
    grad = lambda state: tuple(-(x - mu) / v for x in state)
    z0 = jnp.zeros((4000, 1))
    z, eps = jax.jit(lambda key: emd.langevin(grad, z0, z0, 400, 0.02, key, cancel_noise=False))(jax.random.key(0))
    for x in (z, eps):
        assert float(jnp.mean(x)) == pytest.approx(1.5, abs=0.05)
        assert float(jnp.var(x)) == pytest.approx(0.5 * (1 + 0.02 / (2 * 0.5)), rel=0.08)  # the discretised chain


def test_no_steps_and_noise_cancellation():
    z, eps = jax.random.normal(jax.random.key(1), (2, 8, 3))
    grad = lambda state: (-state[0], -state[1])  # the prior alone
    same = emd.langevin(grad, z, eps, 0, 0.1, jax.random.key(2))
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(same, (z, eps), strict=True))
    # reference: the chain by hand, then eps minus the noise it received
    gamma, steps, key = 0.1, 3, jax.random.key(3)
    ref_z, ref_eps, injected = np.asarray(z), np.asarray(eps), np.zeros_like(eps)
    for k in jax.random.split(key, steps):
        z_key, eps_key = jax.random.split(k)
        n_z = np.sqrt(2 * gamma) * np.asarray(jax.random.normal(z_key, z.shape))
        n_eps = np.sqrt(2 * gamma) * np.asarray(jax.random.normal(eps_key, eps.shape))
        ref_z, ref_eps = ref_z - gamma * ref_z + n_z, ref_eps - gamma * ref_eps + n_eps
        injected = injected + n_eps
    got_z, got_eps = emd.langevin(grad, z, eps, steps, gamma, key)
    np.testing.assert_allclose(got_z, ref_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_eps, ref_eps - injected, rtol=1e-5, atol=1e-6)
    assert float(np.abs(injected).max()) > 0.1  # the cancelled noise was there


def test_the_e_steps_gradient_is_that_of_its_log_target():
    """Data N(m_p, v_p) and generator marginal N(m_q, v_q) on the EDM path (alpha 1): exact x0 predictors, and the
    gradient of log p_t(x_t) - log q_t(x_t) - z^2 / 2 - eps^2 / 2 through x_t = g(z) + sigma eps with g(z) = 2 z + 1."""
    m_p, v_p, m_q, v_q = 0.5, 0.3, -0.2, 0.8
    sigma = jnp.asarray([0.7, 1.5])
    z, eps = jnp.asarray([[0.3], [-1.1]]), jnp.asarray([[0.4], [0.9]])
    g = lambda z: 2.0 * z + 1.0
    x0 = lambda m, v: lambda x_t: m + v / (v + sigma[:, None] ** 2) * (x_t - m)
    got = emd.log_target_grad(g, x0(m_p, v_p), x0(m_q, v_q), jnp.ones(2), sigma, z, eps)

    def log_target(z, eps):
        x_t = g(z) + sigma[:, None] * eps
        log_n = lambda m, v: -0.5 * (x_t - m) ** 2 / (v + sigma[:, None] ** 2)
        return jnp.sum(log_n(m_p, v_p) - log_n(m_q, v_q) - 0.5 * z**2 - 0.5 * eps**2)

    want = jax.grad(log_target, argnums=(0, 1))(z, eps)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

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

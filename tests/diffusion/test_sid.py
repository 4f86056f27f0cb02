"""SiD's generator loss against numpy and its limiting cases (jdistill.diffusion.methods.sid)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods.sid import sid_generator_loss


def test_sid_loss_is_the_papers_fused_form():
    rng = np.random.default_rng(0)
    x_g, real, fake = (rng.standard_normal((3, 4, 2)).astype(np.float32) for _ in range(3))
    weight = np.abs(x_g - real).mean(axis=(1, 2))
    for alpha in (1.2, 1.0, 0.5):
        expected = (1 - alpha) * ((real - fake) ** 2).mean(axis=(1, 2)) + ((real - fake) * (fake - x_g)).mean(
            axis=(1, 2)
        )
        np.testing.assert_allclose(sid_generator_loss(x_g, real, fake, alpha), np.mean(expected / weight), rtol=1e-5)
    # the fake score equals the teacher's: loss and its gradient vanish
    assert float(sid_generator_loss(x_g, real, real)) == 0.0
    grad = jax.grad(lambda x: sid_generator_loss(x, real, real))(jnp.asarray(x_g))
    assert float(jnp.abs(grad).max()) == 0.0


def test_sid_moves_a_gaussian_generator_to_the_teachers_mean():
    """Data N(mu_r, s^2), generator x_g = mu_g + s z, exact x0 predictors on the EDM path with the fake score's mean
    held at the current mu_g: dL/dmu_g = -(1 - k)^2 (mu_r - mu_g) / weight for every alpha (k = s^2 / (s^2 + sigma^2)),
    so descent moves mu_g to mu_r."""
    mu_r, mu_g, s, sigma = 1.0, -1.0, 0.5, 1.0
    k = s**2 / (s**2 + sigma**2)
    z, eps = jax.random.normal(jax.random.key(0), (2, 8192, 1))

    def loss(shift, alpha):
        x_g = shift + s * z
        x_t = x_g + sigma * eps  # the gradient flows through x_t into both scores
        return sid_generator_loss(x_g, mu_r + k * (x_t - mu_r), mu_g + k * (x_t - mu_g), alpha)

    x_g = mu_g + s * np.asarray(z)
    weight = np.abs(x_g - (mu_r + k * (x_g + sigma * np.asarray(eps) - mu_r))).reshape(-1)
    for alpha in (1.2, 1.0):
        grad = float(jax.grad(loss)(jnp.float32(mu_g), alpha))
        assert grad == pytest.approx(-((1 - k) ** 2) * (mu_r - mu_g) * np.mean(1 / weight), rel=1e-3)
        assert grad < 0  # descent increases mu_g toward mu_r

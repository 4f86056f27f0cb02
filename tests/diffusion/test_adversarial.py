"""The adversarial terms (jdistill.diffusion.methods.adversarial) and Flash-DMD's split of the losses: the features are
the denoiser's own states, the GAN losses against numpy and their limits, the weighted distribution-matching loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.denoisers import DiT, MLPDenoiser, modulate, unpatchify
from jdistill.diffusion.methods import adversarial, dmd
from jdistill.diffusion.schedules import EDM
from tests.diffusion.methods import fake_teacher


def _perturbed(model, key):
    """Every parameter moved off its initialisation (so the zero-initialised output layers take part)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    nnx.update(
        model,
        jax.tree.unflatten(
            treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
        ),
    )
    return model


def _output_from_features(kind):
    """(the output layer applied to the last feature level, the denoiser's output) of a perturbed DiT or 2-D MLP."""
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1) if kind == "dit" else (3, 2))
    t = jnp.asarray([0.5, 2.0, 10.0])
    labels = jnp.asarray([1, 2, 10]) if kind == "dit" else None

    @jax.jit  # one program: building, perturbing and running the denoiser
    def pair(key):
        if kind == "mlp":
            mlp = _perturbed(MLPDenoiser(EDM(), hidden=16, num_layers=2, rngs=nnx.Rngs(key)), key)
            features, _ = adversarial.denoiser_features(mlp, x, t)
            assert len(features) == 2
            return mlp.out(jax.nn.silu(features[-1])), mlp(x, t)
        dit = _perturbed(DiT(fake_teacher.DIT, EDM(), rngs=nnx.Rngs(key)), key)
        features, c = adversarial.denoiser_features(dit, x, t, labels)
        assert len(features) == 1 and features[0].shape == (3, 4, 16)
        shift, scale = jnp.split(dit.final_modulation(jax.nn.silu(c)), 2, axis=-1)
        return unpatchify(dit.out(modulate(features[-1], shift, scale)), 4, 8, 8, 1), dit(x, t, labels)

    return pair(jax.random.key(1))


@pytest.mark.parametrize("kind", ["mlp", pytest.param("dit", marks=pytest.mark.slow)])
def test_features_are_the_denoisers_own_states(kind):
    """The output layer applied to the last feature level gives the denoiser's output."""
    out, want = _output_from_features(kind)
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_gan_losses_against_numpy_and_their_limits():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((2, 16)).astype(np.float32)
    softplus = lambda v: np.log1p(np.exp(v))
    np.testing.assert_allclose(
        adversarial.discriminator_loss(real, fake), softplus(-real).mean() + softplus(fake).mean(), rtol=1e-5
    )
    hinge = np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()
    np.testing.assert_allclose(adversarial.discriminator_loss(real, fake, "hinge"), hinge, rtol=1e-5)
    np.testing.assert_allclose(adversarial.generator_loss(fake), softplus(-fake).mean(), rtol=1e-5)
    np.testing.assert_allclose(adversarial.generator_loss(fake, "hinge"), -fake.mean(), rtol=1e-5)
    zero = jnp.zeros(4)
    assert float(adversarial.discriminator_loss(zero, zero)) == pytest.approx(2 * np.log(2), rel=1e-6)
    assert float(adversarial.discriminator_loss(zero, zero, "hinge")) == pytest.approx(2.0)
    # the classifier gains by raising real logits and lowering fake ones; the generator by raising its logits
    d_real, d_fake = jax.grad(adversarial.discriminator_loss, argnums=(0, 1))(zero, zero)
    assert float(d_real.max()) < 0 < float(d_fake.min())
    for kind in adversarial.GAN_LOSSES:
        assert float(jax.grad(adversarial.generator_loss)(zero, kind).max()) < 0
    weights = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(
        adversarial.generator_loss(jnp.asarray(fake[:4]), weights=weights), softplus(-fake[[0, 2]]).sum() / 4, rtol=1e-5
    )


def test_flash_split_and_the_weighted_distribution_matching_loss():
    dm_w, gan_w = dmd.flash_weights(jnp.arange(4), 2)
    np.testing.assert_array_equal(dm_w, [1, 1, 0, 0])
    np.testing.assert_array_equal(gan_w, [0, 0, 1, 1])
    rng = np.random.default_rng(1)
    x, real, fake = (jnp.asarray(rng.standard_normal((4, 3)), jnp.float32) for _ in range(3))
    full = dmd.distribution_matching_loss(x, real, fake)
    np.testing.assert_allclose(dmd.distribution_matching_loss(x, real, fake, jnp.ones(4)), full, rtol=1e-6)
    assert float(dmd.distribution_matching_loss(x, real, fake, jnp.zeros(4))) == 0.0
    grad = jax.grad(lambda x: dmd.distribution_matching_loss(x, real, fake, dm_w))(x)
    want = np.asarray(dmd.distribution_matching_gradient(x, real, fake)) / x.size * np.asarray(dm_w)[:, None]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)

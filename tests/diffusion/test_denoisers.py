"""Denoisers: the DiT's patching, adaLN-Zero start, gated attention, null class and conditioning inputs; the MLP
denoiser; sinusoidal time features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.denoisers import DiT, MLPDenoiser, patchify, unpatchify
from jdistill.diffusion.embeddings import sinusoidal_embedding
from jdistill.diffusion.schedules import EDM, RectifiedFlow
from jdistill.errors import ConfigError
from jdistill.models.config import ModelConfig

CONFIG = ModelConfig(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, gate="headwise", patch_size=2)


def apply(model):
    """`model(x, t, labels[, guidance_scale])` compiled once (eager calls dispatch every op separately)."""
    graphdef, params = nnx.split(model)
    return jax.jit(lambda x, t, *rest: nnx.merge(graphdef, params)(x, t, *rest))


@pytest.fixture(scope="module")
def flow_dit():
    return perturbed(DiT(CONFIG, RectifiedFlow(), rngs=nnx.Rngs(0)))


def perturbed(model, scale=0.3):
    """The model with every parameter moved off its (partly zero) initialisation, so every path carries signal."""
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    moved = [leaf + scale * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, moved))


def test_patchify_round_trips_and_orders_patches_row_major():
    images = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    patches = patchify(images, 2)
    assert patches.shape == (2, 16, 4)
    np.testing.assert_array_equal(patches[0, 1], images[0, 0:2, 2:4, 0].reshape(-1))
    np.testing.assert_array_equal(unpatchify(patches, 2, 8, 8, 1), images)


def test_dit_starts_at_zero_output_and_uses_the_gated_attention():
    model = DiT(CONFIG, EDM(), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    out = apply(model)(x, jnp.array([0.1, 1.0, 10.0]), jnp.array([0, 5, 9]))
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0  # adaLN-Zero: zero output layer at init
    gate_width = CONFIG.num_heads  # headwise SDPA output gate fused into the query projection
    kernel = model.blocks[0].attention.query_and_gate.kernel[...]
    assert kernel.shape == (CONFIG.d_model, CONFIG.d_model + gate_width)
    assert model.num_classes == 10 and model.null_label == 10


def test_labels_none_is_the_null_class_and_labels_change_the_output(flow_dit):
    model = apply(flow_dit)
    x, t = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.array([0.3, 0.8])
    null = model(x, t, None)
    np.testing.assert_allclose(model(x, t, jnp.array([10, 10])), null, rtol=1e-6)
    assert float(jnp.abs(model(x, t, jnp.array([1, 2])) - null).max()) > 1e-3
    np.testing.assert_allclose(model(x, 0.5, None), model(x, jnp.array([0.5, 0.5]), None), rtol=1e-6)


def test_edm_denoiser_sees_c_in_x_and_c_noise():
    """Under EDM the network's inputs are (c_in x, c_noise(sigma)): the same weights under a schedule without
    preconditioning (rectified flow passes x and t through) give the same output when fed those inputs."""
    edm = EDM()
    model = perturbed(MLPDenoiser(edm, hidden=16, num_layers=1, rngs=nnx.Rngs(0)))
    plain = MLPDenoiser(RectifiedFlow(), hidden=16, num_layers=1, rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(model))
    x, sigma = jax.random.normal(jax.random.key(2), (4, 2)), jnp.array([0.01, 0.5, 5.0, 80.0])
    expected = apply(plain)(x / jnp.sqrt(sigma**2 + 0.25)[:, None], jnp.log(sigma) / 4)
    np.testing.assert_allclose(apply(model)(x, sigma), expected, rtol=1e-5, atol=1e-6)


def test_conditioning_inputs_are_checked():
    unconditional = apply(MLPDenoiser(EDM(), hidden=8, num_layers=1, rngs=nnx.Rngs(0)))
    x = jnp.zeros((1, 2))
    with pytest.raises(ConfigError, match="unconditional denoiser"):
        unconditional(x, 1.0, jnp.array([1]))
    with pytest.raises(ConfigError, match="without guidance conditioning"):
        unconditional(x, 1.0, None, 2.0)
    guided = MLPDenoiser(EDM(), hidden=8, num_layers=1, num_classes=3, guidance_conditioning=True, rngs=nnx.Rngs(0))
    guided = apply(perturbed(guided))
    x2, labels = jnp.ones((2, 2)), jnp.array([0, 1])
    np.testing.assert_allclose(guided(x2, 1.0, labels), guided(x2, 1.0, labels, 1.0), rtol=1e-6)
    assert float(jnp.abs(guided(x2, 1.0, labels, 4.0) - guided(x2, 1.0, labels, 1.0)).max()) > 1e-4


def test_sinusoidal_embedding_matches_its_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    features = sinusoidal_embedding(t, 6, scale=10.0, max_period=100.0)
    freqs = 100.0 ** (-np.arange(3) / 3)
    args = 10.0 * np.asarray(t)[:, None] * freqs
    np.testing.assert_allclose(features, np.concatenate([np.cos(args), np.sin(args)], axis=-1), rtol=1e-5, atol=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (3, 7)

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
from tests.diffusion.weights import random_weights

CONFIG = ModelConfig(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, gate="headwise", patch_size=2)


def apply(model):
    """`model(x, t, labels[, guidance_scale])` compiled once (eager calls dispatch every op separately)."""
    graphdef, params = nnx.split(model)
    return jax.jit(lambda x, t, *rest: nnx.merge(graphdef, params)(x, t, *rest))


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


def test_dit_null_class_labels_and_preconditioning():
    """labels=None is the null class; labels change the output; under EDM the DiT sees (c_in x, c_noise): the same
    weights under rectified flow (inputs passed through) fed those inputs give the same output."""
    model = random_weights(lambda: DiT(CONFIG, EDM(), rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    plain = nnx.clone(model)
    plain.schedule = RectifiedFlow()
    plain_graphdef = nnx.graphdef(plain)

    @jax.jit
    def outputs(x, sigma):
        dit = nnx.merge(graphdef, params)
        c_in = (1 / jnp.sqrt(sigma**2 + 0.25))[:, None, None, None]
        scaled = nnx.merge(plain_graphdef, params)(c_in * x, jnp.log(sigma) / 4)
        return dit(x, sigma, None), dit(x, sigma, jnp.array([10, 10])), dit(x, sigma, jnp.array([1, 2])), scaled

    x, sigma = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.array([0.3, 8.0])
    null, null_label, labelled, scaled = outputs(x, sigma)
    np.testing.assert_allclose(null_label, null, rtol=1e-6)
    assert float(jnp.abs(labelled - null).max()) > 1e-3
    np.testing.assert_allclose(scaled, null, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mlp():
    """A class- and guidance-conditioned MLP denoiser under EDM with random weights."""
    return random_weights(
        lambda: MLPDenoiser(EDM(), hidden=16, num_layers=1, num_classes=3, guidance_conditioning=True, rngs=nnx.Rngs(0))
    )


def test_edm_preconditioning_and_the_guidance_input(mlp):
    """Under EDM the network sees (c_in x, c_noise(sigma)): the same weights under a schedule without
    preconditioning (rectified flow passes x and t through) give the same output when fed those inputs. The
    guidance scale is an input of a guidance-conditioned denoiser (none given: scale 1)."""
    graphdef, params = nnx.split(mlp)
    plain = nnx.clone(mlp)
    plain.schedule = RectifiedFlow()
    plain_graphdef = nnx.graphdef(plain)
    x, sigma = jax.random.normal(jax.random.key(2), (4, 2)), jnp.array([0.01, 0.5, 5.0, 80.0])
    labels = jnp.arange(4) % 3

    @jax.jit
    def outputs(x, sigma):
        model = nnx.merge(graphdef, params)
        scaled = nnx.merge(plain_graphdef, params)(x / jnp.sqrt(sigma**2 + 0.25)[:, None], jnp.log(sigma) / 4, labels)
        return model(x, sigma, labels), scaled, model(x, sigma, labels, 1.0), model(x, sigma, labels, 4.0)

    preconditioned, expected, one, four = outputs(x, sigma)
    np.testing.assert_allclose(preconditioned, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preconditioned, one, rtol=1e-6)
    assert float(jnp.abs(four - one).max()) > 1e-4


def test_conditioning_inputs_are_checked():
    """Checked while tracing (`jax.eval_shape`: nothing is computed)."""
    unconditional = nnx.eval_shape(lambda: MLPDenoiser(EDM(), hidden=8, num_layers=1, rngs=nnx.Rngs(0)))
    x = jax.ShapeDtypeStruct((1, 2), jnp.float32)
    with pytest.raises(ConfigError, match="labels given to an unconditional denoiser"):
        jax.eval_shape(lambda x: unconditional(x, 1.0, jnp.array([1])), x)
    with pytest.raises(ConfigError, match="without guidance conditioning"):
        jax.eval_shape(lambda x: unconditional(x, 1.0, None, 2.0), x)


def test_sinusoidal_embedding_matches_its_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    features = sinusoidal_embedding(t, 6, scale=10.0, max_period=100.0)
    freqs = 100.0 ** (-np.arange(3) / 3)
    args = 10.0 * np.asarray(t)[:, None] * freqs
    np.testing.assert_allclose(features, np.concatenate([np.cos(args), np.sin(args)], axis=-1), rtol=1e-5, atol=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (3, 7)

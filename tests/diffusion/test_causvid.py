"""CausVid's parts (jdistill.diffusion.methods.causvid): the digit videos count up, the block-causal mask, the KV cache
computes the full causal pass, and the autoregressive rollout never looks ahead."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.methods import causvid
from jdistill.diffusion.schedules import EDM
from jdistill.models.config import ModelConfig

CONFIG = ModelConfig(kind="classifier", num_layers=2, d_model=16, num_heads=2, mlp_dim=32, patch_size=4, num_classes=10)


def _perturbed(model, key):
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


def test_digit_videos_count_up_from_the_label():
    labels = jnp.arange(40) % 10
    images = jnp.broadcast_to(labels[:, None, None, None].astype(jnp.float32), (40, 8, 8, 1))  # image = its class
    video = causvid.digit_video(images, labels, 3, jax.random.key(0))
    assert video.shape == (40, 3, 8, 8, 1)
    np.testing.assert_array_equal(video[:, :, 0, 0, 0], (labels[:, None] + jnp.arange(3)) % 10)
    mask = causvid.block_causal_mask(3, 2)
    np.testing.assert_array_equal(mask[2], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(mask[5], [1] * 6)


def test_the_kv_cache_is_the_causal_pass_and_nothing_looks_ahead():
    """The frame-by-frame pass with the KV cache equals the full block-causal pass (per-frame times); earlier frames
    ignore a change of the last one. The (frame, label) embedding: raising pair (2, 3) changes frame 2 of the label-3
    video only (frames 0, 1 and the label-7 video ignore it)."""
    config = dataclasses.replace(CONFIG, num_layers=1)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 1))
    t = jnp.asarray([[0.5, 2.0, 10.0], [1.0, 0.1, 3.0]])
    labels = jnp.asarray([3, 7])

    @jax.jit
    def run(key):
        model = causvid.VideoDenoiser(config, EDM(), 3, num_classes=10, causal=True, rngs=nnx.Rngs(key))
        model = _perturbed(model, key)
        both = model(jnp.concatenate([x, x.at[:, 2].add(1.0)]), jnp.concatenate([t, t]), jnp.concatenate([labels] * 2))
        cached = causvid.causal_forward_with_cache(model, x, t, labels)
        model.frame_class[...] = model.frame_class[...].at[2, 3].add(5.0)
        return both[:2], both[2:], cached, model(x, t, labels)

    full, full_later, cached, paired = run(jax.random.key(1))
    np.testing.assert_allclose(cached, full, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(full_later[:, :2], full[:, :2], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(full_later[:, 2] - full[:, 2]).max()) > 1e-3
    changed = np.asarray(jnp.abs(paired - full).max(axis=(2, 3, 4)))  # [video, frame]
    assert changed[0, 2] > 1e-2
    np.testing.assert_allclose(changed[0, :2], 0.0, atol=1e-6)
    np.testing.assert_allclose(changed[1], 0.0, atol=1e-6)


@pytest.mark.slow
def test_a_bidirectional_model_looks_ahead():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 1))

    @jax.jit
    def run(key):
        model = _perturbed(
            causvid.VideoDenoiser(CONFIG, EDM(), 3, num_classes=10, causal=False, rngs=nnx.Rngs(key)), key
        )
        return model(x, 1.0, None), model(x.at[:, 2].add(1.0), 1.0, None)

    before, after = run(jax.random.key(1))
    assert float(jnp.abs(after[:, 0] - before[:, 0]).max()) > 1e-3


@pytest.mark.slow
def test_the_rollout_never_looks_ahead():
    labels = jnp.asarray([3, 7])

    @jax.jit
    def run(key):
        model = _perturbed(
            causvid.VideoDenoiser(CONFIG, EDM(), 3, num_classes=10, causal=True, rngs=nnx.Rngs(key)), key
        )
        z = jax.random.normal(key, (2, 3, 8, 8, 1))
        video = causvid.generate_video(model, EDM(), z, [80.0, 1.0], labels, key, 0.002)
        return video, causvid.generate_video(model, EDM(), z.at[:, 2].add(1.0), [80.0, 1.0], labels, key, 0.002)

    video, changed = run(jax.random.key(1))
    assert video.shape == (2, 3, 8, 8, 1)
    np.testing.assert_allclose(changed[:, :2], video[:, :2], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(changed[:, 2] - video[:, 2]).max()) > 1e-4

"""CausVid's parts (jdistill.diffusion.methods.causvid): the digit videos count up, the block-causal mask, the KV cache
computes the full causal pass, and the autoregressive rollout never looks ahead."""

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
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 1))
    t = jnp.asarray([[0.5, 2.0, 10.0], [1.0, 0.1, 3.0]])
    labels = jnp.asarray([3, 7])
    later = x.at[:, 2].add(1.0)  # only the last frame changes

    @jax.jit
    def run(key):
        out = {}
        for causal in (True, False):
            model = _perturbed(
                causvid.VideoDenoiser(CONFIG, EDM(), 3, num_classes=10, causal=causal, rngs=nnx.Rngs(key)), key
            )
            out[str(causal)] = (model(x, t, labels), model(later, t, labels))
            if causal:
                out["cached"] = causvid.causal_forward_with_cache(model, x, t, labels)
        return out

    out = run(jax.random.key(1))
    full, full_later = out["True"]
    np.testing.assert_allclose(out["cached"], full, rtol=2e-4, atol=2e-5)
    # causal: frames 0, 1 ignore the last frame; bidirectional: they do not
    np.testing.assert_allclose(full_later[:, :2], full[:, :2], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(full_later[:, 2] - full[:, 2]).max()) > 1e-3
    bidirectional, bidirectional_later = out["False"]
    assert float(jnp.abs(bidirectional_later[:, 0] - bidirectional[:, 0]).max()) > 1e-3


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

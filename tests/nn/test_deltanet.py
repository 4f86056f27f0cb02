"""Gated DeltaNet layer: causal conv, chunked == recurrent, decoding from state == full forward, causality."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig
from jdistill.nn.deltanet import GatedDeltaNet, causal_depthwise_conv, l2_normalize

CONFIG = ModelConfig(
    kind="lm",
    d_model=32,
    linear_key_heads=2,
    linear_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=6,
    layer_pattern="D",
)


def test_causal_depthwise_conv_matches_numpy_and_carries_history():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 7, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    padded = np.concatenate([np.zeros((2, 3, 3), np.float32), x], axis=1)
    want = np.stack([sum(padded[:, t + j] * w[j] for j in range(4)) for t in range(7)], axis=1)
    got, history = causal_depthwise_conv(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    first, carried = causal_depthwise_conv(x[:, :4], w)
    second, _ = causal_depthwise_conv(x[:, 4:], w, carried)
    np.testing.assert_allclose(np.concatenate([first, second], 1), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(history, x[:, -3:])


def test_l2_normalize():
    x = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(x), x / np.sqrt(25 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("seq", [1, 13, 70])
def test_chunked_equals_recurrent_and_decoding_equals_full(seq):
    x = jax.random.normal(jax.random.key(1), (2, seq, CONFIG.d_model))
    chunked = GatedDeltaNet(dataclasses.replace(CONFIG, delta_rule_impl="chunked"), rngs=nnx.Rngs(0))
    recurrent = GatedDeltaNet(dataclasses.replace(CONFIG, delta_rule_impl="recurrent"), rngs=nnx.Rngs(0))
    full = chunked(x)
    np.testing.assert_allclose(full, recurrent(x), atol=2e-5)
    state, outputs = chunked.init_state(2), []
    for t in range(seq):
        out, state = chunked.decode(x[:, t : t + 1], state=state)
        outputs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outputs, 1), full, atol=2e-5)


def test_causal_and_gradients_finite():
    graphdef, params = nnx.split(GatedDeltaNet(CONFIG, rngs=nnx.Rngs(0)))
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))  # jitted: eager op-by-op dispatch costs seconds
    x = jax.random.normal(jax.random.key(2), (1, 10, CONFIG.d_model))
    changed = x.at[:, 6:].set(0.0)
    np.testing.assert_allclose(apply(params, x)[:, :6], apply(params, changed)[:, :6], atol=1e-6)
    grads = jax.jit(jax.grad(lambda p: apply(p, x).sum()))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_value_heads_must_be_a_multiple_of_key_heads():
    assert ("linear_value_heads", "a multiple of linear_key_heads=3") in dataclasses.replace(
        CONFIG, linear_key_heads=3
    ).validate()

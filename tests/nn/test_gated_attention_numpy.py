"""The gated attention layer equals a float64 numpy implementation of the whole layer (projections, RoPE, GQA,
causal softmax attention, the sigmoid gate of Qiu et al. 2025, output projection), with random non-zero gate
weights: a flipped, misplaced or mis-shaped gate changes the output."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig
from jdistill.nn import GatedSelfAttention
from tests.numpy_transformer import gated_attention_layer, randomize

BASE = ModelConfig(kind="lm", d_model=12, num_heads=4, num_kv_heads=2, head_dim=4, attention_impl="xla")

CASES = {
    "headwise": BASE,
    "elementwise": dataclasses.replace(BASE, gate="elementwise"),
    "headwise_mha": dataclasses.replace(BASE, num_kv_heads=None),
    "headwise_qk_norm_partial_rope": dataclasses.replace(BASE, qk_norm=True, rotary_fraction=0.5),
    "value_headwise": dataclasses.replace(BASE, gate_position="value"),
    "value_elementwise": dataclasses.replace(BASE, gate="elementwise", gate_position="value"),
    "ungated": dataclasses.replace(BASE, gate="none"),
}


def _layer_and_params(config, causal, seed=0):
    layer = GatedSelfAttention(config, causal=causal, rope=causal, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    params = randomize(nnx.to_pure_dict(state), np.random.default_rng(seed), scale=0.6)
    nnx.replace_by_pure_dict(state, jax_tree(params))
    return nnx.merge(graphdef, state), params


def jax_tree(pure):
    return {k: jax_tree(v) if isinstance(v, dict) else jnp.asarray(v) for k, v in pure.items()}


@pytest.mark.parametrize("causal", [True, False], ids=["causal_rope", "bidirectional"])
@pytest.mark.parametrize("name", list(CASES))
def test_layer_equals_numpy(name, causal):
    config = CASES[name]
    layer, params = _layer_and_params(config, causal)
    x = np.random.default_rng(1).normal(size=(2, 7, config.d_model))
    got = np.asarray(layer(jnp.asarray(x, jnp.float32)))
    want = gated_attention_layer(params, x, config, causal=causal, use_rope=causal)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_the_gate_matters_in_these_cases(gate):
    """Guards the test above: with these weights the gate is far from the constant 1/2 (a formula that ignores
    W_theta, or uses sigmoid(-X W_theta), gives a clearly different output)."""
    config = dataclasses.replace(BASE, gate=gate)
    _, params = _layer_and_params(config, True)
    x = np.random.default_rng(1).normal(size=(2, 7, config.d_model))
    want = gated_attention_layer(params, x, config, causal=True, use_rope=True)
    flipped = dict(params, query_and_gate={"kernel": params["query_and_gate"]["kernel"].copy()})
    width = config.num_heads * config.resolved_head_dim
    flipped["query_and_gate"]["kernel"][:, width:] *= -1
    other = gated_attention_layer(flipped, x, config, causal=True, use_rope=True)
    assert np.max(np.abs(other - want)) > 1e-2


def test_decode_with_a_cache_equals_the_full_layer():
    """Token-by-token decoding through the KV cache gives the full causal layer's output at every position."""
    config = CASES["headwise"]
    layer, params = _layer_and_params(config, True)
    x = np.random.default_rng(2).normal(size=(2, 6, config.d_model))
    want = gated_attention_layer(params, x, config, causal=True, use_rope=True)
    from jdistill.nn.kv_cache import KVCache

    cache = KVCache.zeros(2, 8, config.resolved_kv_heads, config.resolved_head_dim, jnp.float32)
    outs = []
    for position in range(6):
        positions = jnp.full((2, 1), position, jnp.int32)
        out, cache = layer.decode(
            jnp.asarray(x[:, position : position + 1], jnp.float32), positions=positions, cache=cache
        )
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=2e-5, rtol=2e-5)

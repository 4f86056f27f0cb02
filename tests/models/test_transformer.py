"""The gated transformer: shapes, the SDPA output gate, causality, determinism of init."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer, count_params
from jdistill.nn import GatedSelfAttention

CLASSIFIER = ModelConfig(kind="classifier", num_layers=2, d_model=32, num_heads=4, mlp_dim=64)
LM = ModelConfig(kind="lm", num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, vocab_size=64)


@pytest.mark.parametrize("gate", ["none", "headwise", "elementwise"])
@pytest.mark.parametrize("position", ["sdpa_output", "value"])
def test_output_shapes(gate, position):
    images = jnp.ones((3, 8, 8, 1))
    tokens = jnp.ones((3, 10), jnp.int32)
    classifier = Transformer(dataclasses.replace(CLASSIFIER, gate=gate, gate_position=position), rngs=nnx.Rngs(0))
    lm = Transformer(dataclasses.replace(LM, gate=gate, gate_position=position), rngs=nnx.Rngs(0))
    assert classifier(images).logits.shape == (3, 10)
    out = lm(tokens, return_hidden_states=True)
    assert out.logits.shape == (3, 10, 64) and out.logits.dtype == jnp.float32
    assert len(out.hidden_states) == LM.num_layers + 1


def _zero_gate_weights(attention: GatedSelfAttention):
    kernel = attention.query_and_gate.kernel
    width = attention.gate_width
    kernel[...] = kernel[...].at[:, -width:].set(0.0)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_zero_gate_weights_halve_the_attention_output(gate):
    gated_config = dataclasses.replace(LM, gate=gate)
    gated = GatedSelfAttention(gated_config, causal=True, rope=True, rngs=nnx.Rngs(1))
    ungated = GatedSelfAttention(dataclasses.replace(LM, gate="none"), causal=True, rope=True, rngs=nnx.Rngs(1))
    _zero_gate_weights(gated)
    width = gated.gate_width
    ungated.query_and_gate.kernel[...] = gated.query_and_gate.kernel[...][:, :-width]
    ungated.key_value.kernel[...] = gated.key_value.kernel[...]
    ungated.output.kernel[...] = gated.output.kernel[...]
    x = jax.random.normal(jax.random.key(0), (2, 7, LM.d_model))
    np.testing.assert_allclose(gated(x), 0.5 * ungated(x), rtol=1e-5, atol=1e-6)


def test_lm_is_causal():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    changed = tokens.at[:, 8:].set((tokens[:, 8:] + 1) % 64)
    np.testing.assert_allclose(model(tokens).logits[:, :8], model(changed).logits[:, :8], atol=1e-5)
    assert not np.allclose(model(tokens).logits[:, 8:], model(changed).logits[:, 8:])


def test_classifier_is_bidirectional():
    model = Transformer(CLASSIFIER, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(2), (1, 8, 8, 1))
    assert not np.allclose(model(images).logits, model(images.at[:, -1, -1].set(5.0)).logits)


def test_init_is_deterministic_in_the_key_and_params_are_counted():
    a = Transformer(CLASSIFIER, rngs=nnx.Rngs(params=jax.random.key(3)))
    b = Transformer(CLASSIFIER, rngs=nnx.Rngs(params=jax.random.key(3)))
    c = Transformer(CLASSIFIER, rngs=nnx.Rngs(params=jax.random.key(4)))
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c), strict=True))
    assert count_params(a) == sum(x.size for x in leaves(a)) > 0


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    model32 = Transformer(LM, rngs=nnx.Rngs(0))
    model16 = Transformer(dataclasses.replace(LM, dtype="bfloat16"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    out16 = model16(tokens).logits
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, model32(tokens).logits, atol=0.1)


def test_tied_embeddings_have_no_head():
    tied = Transformer(dataclasses.replace(LM, tie_embeddings=True), rngs=nnx.Rngs(0))
    untied = Transformer(LM, rngs=nnx.Rngs(0))
    assert count_params(untied) - count_params(tied) == LM.d_model * LM.vocab_size + LM.vocab_size
    assert tied(jnp.ones((1, 4), jnp.int32)).logits.shape == (1, 4, 64)


@pytest.mark.parametrize("expanded, base", [("xgelu", "gelu_exact"), ("xsilu", "silu"), ("xatlu", "atlu")])
def test_expanded_activation_starts_as_its_base_and_alpha_learns(expanded, base):
    tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, 64)
    model = Transformer(dataclasses.replace(LM, activation=expanded), rngs=nnx.Rngs(0))
    plain = Transformer(dataclasses.replace(LM, activation=base), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(tokens).logits, plain(tokens).logits, atol=1e-5)
    graphdef, params = nnx.split(model)
    grads = jax.grad(lambda p: nnx.merge(graphdef, p)(tokens).logits.std())(params)
    alpha_grads = [g for path, g in nnx.to_flat_state(grads) if path[-1] == "alpha"]
    assert len(alpha_grads) == LM.num_layers and all(abs(float(g[...])) > 0 for g in alpha_grads)

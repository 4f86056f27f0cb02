"""Learned middle-layer skipping (docs/early_exit.md#learned-middle-layer-skipping): the spans, the choice rule, the
masked teacher-forced pass, and KV-cached decoding against it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models import middle_skip as ms


def test_central_spans_are_symmetric_and_leave_the_router_blocks():
    assert ms.central_spans(8, 1) == [(0, 0), (3, 5), (2, 6), (1, 7)]
    assert ms.central_spans(8, 2) == [(0, 0), (3, 5), (2, 6)]
    assert ms.central_spans(7, 1) == [(0, 0), (3, 4), (2, 5), (1, 6)]
    np.testing.assert_allclose(ms.span_costs(8, ms.central_spans(8, 1)), [1.0, 0.75, 0.5, 0.25])


def test_choice_is_the_largest_k_with_enough_probability_of_skipping_at_least_that_much():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]))
    np.testing.assert_array_equal(ms.choose(logits, 0.5), [2, 0, 1])
    np.testing.assert_array_equal(ms.choose(logits, 0.35), [3, 0, 2])


LM = ModelConfig(kind="lm", num_layers=4, d_model=16, num_heads=2, mlp_dim=32, vocab_size=11, max_seq_len=32)


def test_masked_pass_skips_blocks_and_hides_skipped_keys():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    spans = ms.central_spans(4, 1)  # [(0, 0), (1, 3)]
    inputs = jax.random.randint(jax.random.key(1), (1, 6), 0, 11)
    forward = jax.jit(lambda choices: ms.forward(model, inputs, choices, spans))
    hidden, logits = forward(jnp.zeros((1, 6), jnp.int32))
    keep = jnp.ones((1, 6, 4), bool).at[0, 1, 1:3].set(False).at[0, 3, 1:3].set(False)
    reference = jax.jit(lambda keep: model(inputs, layer_keep=keep).logits)
    np.testing.assert_allclose(logits, reference(jnp.ones_like(keep)), atol=1e-5)  # no skip: the model itself
    hidden, logits = forward(jnp.array([[0, 1, 0, 1, 0, 0]]))
    np.testing.assert_array_equal(hidden[3][0, 1], hidden[1][0, 1])  # a skipping token passes blocks 2, 3 through
    # Token 2 runs block 2 and must not see token 1's (never computed) keys there: a forward in which token 1's
    # keys are replaced by anything gives the same output at every other token.
    plain = reference(keep)
    assert not np.allclose(plain[0, 2:], logits[0, 2:], atol=1e-4)  # layer_keep alone attends to them
    np.testing.assert_allclose(logits[0, 0], plain[0, 0], atol=1e-5)


@pytest.mark.slow  # a compiled decoder with a cond per block: ~10 s on a quiet 2-core machine
def test_decoding_with_skips_equals_the_masked_pass():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    router = {"w": 3.0 * jax.random.normal(jax.random.key(5), (16, 2)), "b": jnp.zeros(2)}
    prompt = jax.random.randint(jax.random.key(3), (1, 5), 0, 11)
    tokens, choices = ms.generate_with_skips(model, router, prompt, max_new_tokens=10, router_layer=1)
    choices = np.asarray(choices)
    assert set(choices.tolist()) == {0, 1}, choices  # both choices occur
    sequence = jnp.concatenate([prompt, tokens], axis=1)
    full = jnp.asarray(np.concatenate([np.zeros(5, np.int32), choices, [0]]))[None]
    _, logits = jax.jit(lambda: ms.forward(model, sequence, full, ms.central_spans(4, 1)))()
    np.testing.assert_array_equal(np.asarray(tokens)[0, 1:], np.argmax(logits[0, 5:-1], axis=-1))

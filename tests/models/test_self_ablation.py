"""Self-ablating transformers (docs/early_exit.md#self-ablating-transformers): the k-winner-takes-all mask and its
straight-through gradient, the ablated pass, and decoding through the winners' weight columns only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models import self_ablation as sa


def test_kwta_keeps_the_top_k_and_passes_a_gradient_to_every_score():
    scores = jnp.array([[0.1, 2.0, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0]])
    kwta = jax.jit(sa.kwta)
    np.testing.assert_array_equal(kwta(scores, 2), [[0, 1, 0, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(kwta(scores, 4), np.ones((2, 4)))
    grad = jax.jit(jax.grad(lambda s: jnp.sum(sa.kwta(s, 2))))(scores)
    assert np.all(np.asarray(grad) > 0)  # every score is pulled up by a loss that wants every unit on


LM = ModelConfig(
    kind="lm", num_layers=2, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=32, mlp="glu", activation="silu",
    mlp_bias=False, vocab_size=11, max_seq_len=32,
)  # fmt: skip


def test_the_ablated_pass_is_the_model_with_everything_kept_and_differs_when_ablating():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    gates = sa.init_gates(model, jax.random.key(1))
    inputs = jax.random.randint(jax.random.key(2), (2, 6), 0, 11)
    run = jax.jit(lambda k_heads, k_neurons: sa.forward(model, gates, inputs, k_heads=k_heads, k_neurons=k_neurons))
    np.testing.assert_allclose(run(4, 32), jax.jit(lambda: model(inputs).logits)(), atol=1e-5)
    assert not np.allclose(run(4, 8), run(4, 32), atol=1e-4)
    assert not np.allclose(run(2, 32), run(4, 32), atol=1e-4)


@pytest.mark.slow  # a compiled decoder: ~8 s on a quiet 2-core machine
def test_decoding_with_gathered_winners_equals_the_ablated_pass():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    gates = sa.init_gates(model, jax.random.key(1))
    prompt = jax.random.randint(jax.random.key(3), (1, 4), 0, 11)
    tokens = sa.generate_with_ablation(model, gates, prompt, max_new_tokens=8, k_heads=2, k_neurons=8)
    sequence = jnp.concatenate([prompt, tokens], axis=1)
    logits = jax.jit(lambda: sa.forward(model, gates, sequence, k_heads=2, k_neurons=8))()
    np.testing.assert_array_equal(np.asarray(tokens)[0], np.argmax(logits[0, 3:-1], axis=-1))

"""JEI-DNN (docs/early_exit.md#jei-dnn): the exit distribution, the two levels of the joint loss, the exit rule and
its use in KV-cached greedy decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models import jei_dnn as jei
from jdistill.models.confidence_exit import generate_with_exits
from jdistill.models.generate import generate


def test_exit_probabilities_are_the_sequential_gate_model():
    logits = jnp.array([[0.3, -1.0], [2.0, 0.0], [-0.5, 1.5]])  # [E = 3, N = 2]
    g = jax.nn.sigmoid(logits)
    want = jnp.stack([g[0], (1 - g[0]) * g[1], (1 - g[0]) * (1 - g[1]) * g[2], (1 - g[0]) * (1 - g[1]) * (1 - g[2])])
    pi = jax.jit(jei.exit_probabilities)(logits)
    np.testing.assert_allclose(pi, want, rtol=1e-6)
    np.testing.assert_allclose(pi.sum(0), 1.0, rtol=1e-6)
    assert (
        float(jax.jit(jei.exit_probabilities)(jnp.array([[40.0], [0.0]]))[0, 0]) == 1.0
    )  # a sure first gate takes all


def test_the_loss_levels_im_weighted_by_exit_probability_gates_by_loss_plus_cost():
    ce = jnp.array([[2.0], [1.0], [0.5]])  # exit 0 worst, the final head best
    gates = jnp.array([[0.0], [0.0]])
    costs = jnp.array([0.25, 0.5, 1.0])
    # IM level: d/d ce_l = sg(pi_l) + rho (the gate term holds the IMs' losses fixed).
    grad_ce = jax.jit(jax.grad(lambda c: jei.jei_loss(c, gates, costs, lam=0.0, rho=0.1)[0]))(ce)
    np.testing.assert_allclose(grad_ce, jei.exit_probabilities(gates) + 0.1, rtol=1e-6)
    # Gate level: without a cost the gates learn to continue (lower loss later); with a large cost, to exit.
    grad = jax.jit(lambda lam: jax.grad(lambda g: jei.jei_loss(ce, g, costs, lam=lam)[0])(gates))
    assert float(grad(0.0)[0, 0]) > 0 and float(grad(0.0)[1, 0]) > 0  # descent lowers g: continue
    assert float(grad(20.0)[0, 0]) < 0  # descent raises the first gate: exit early
    _, metrics = jei.jei_loss(ce, gates, costs, lam=1.0)
    np.testing.assert_allclose(metrics["expected_cost"], jnp.dot(jei.exit_probabilities(gates)[:, 0], costs), rtol=1e-6)


def test_exit_taken_is_the_first_gate_above_the_threshold():
    logits = jnp.array([[-1.0, 2.0, -3.0], [1.0, 3.0, -3.0]])
    taken = jax.jit(jei.exit_taken)
    np.testing.assert_array_equal(taken(logits, 0.5), [1, 0, 2])
    np.testing.assert_array_equal(taken(logits, 0.99), [2, 2, 2])


LM = ModelConfig(kind="lm", num_layers=4, d_model=16, num_heads=2, mlp_dim=32, vocab_size=11, max_seq_len=32)


@pytest.mark.slow  # three compiled decoders: ~15 s on a quiet 2-core machine
def test_decoding_with_jei_gates_uses_the_im_and_the_gates():
    model = Transformer(LM, rngs=nnx.Rngs(2))
    prompt = jax.random.randint(jax.random.key(3), (1, 5), 0, 11)
    exits = (1, 2)
    params = jei.init_params(16, len(exits))
    never = dict(params, gate_b=jnp.full((2,), -30.0))
    tokens, taken, _ = generate_with_exits(
        model, prompt, max_new_tokens=6, threshold=0.5, exit_layers=exits, rule=jei.JEIRule(), rule_params=never
    )
    np.testing.assert_array_equal(tokens, generate(model, prompt, max_new_tokens=6))  # gates shut: the full model
    assert set(np.asarray(taken).tolist()) == {2}
    adapter = 0.5 * jax.random.normal(jax.random.key(4), (2, 16, 16))
    first = dict(params, adapter=adapter, gate_b=jnp.array([30.0, -30.0]))  # always exit 0 through its IM
    tokens, taken, logits = generate_with_exits(
        model, prompt, max_new_tokens=6, threshold=0.5, exit_layers=exits, rule=jei.JEIRule(), rule_params=first
    )
    assert set(np.asarray(taken).tolist()) == {0}
    sequence = jnp.concatenate([prompt, tokens], axis=1)
    hidden = model(sequence, return_hidden_states=True).hidden_states[1][0, 5:10]  # block 1: causal, unaffected
    want = jei.im_logits(model, first, hidden, 0)
    np.testing.assert_allclose(np.asarray(logits)[0], want, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(tokens)[0, 1:], np.argmax(want, axis=-1))
    plain_head = model._logits(model.final_norm(hidden))
    assert not np.allclose(want, plain_head, atol=1e-3)  # the adapter matters

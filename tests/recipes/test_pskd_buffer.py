"""PS-KD's loss reads last epoch's predictions (the buffer in the recipe state), not the current ones:

    loss = mean_i CE((1 - alpha_t) onehot(y_i) + alpha_t P[index_i], softmax(s_i)),  alpha_t = alpha_T (e + 1) / E

with P a buffer that differs from the network's current softmax, checked in value and gradient (the targets are
constants: no gradient flows through P), and through the train step at a later epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.pskd import ProgressiveSelfKD
from jdistill.train import create_train_state, make_train_step

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, attention_impl="xla")
NUM_EXAMPLES, NUM_EPOCHS, ALPHA_T = 12, 4, 0.8


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    buffer = jnp.asarray(rng.dirichlet(np.ones(10) * 0.3, NUM_EXAMPLES), jnp.float32)
    batch = {
        "inputs": jnp.asarray(rng.random((6, 8, 8, 1)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 10, 6), jnp.int32),
        "index": jnp.asarray(rng.permutation(NUM_EXAMPLES)[:6], jnp.int32),
    }
    graphdef, params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))
    recipe = ProgressiveSelfKD(alpha_T=ALPHA_T, num_epochs=NUM_EPOCHS, num_examples=NUM_EXAMPLES)
    return recipe, graphdef, params, buffer, batch


def _expected_loss(graphdef, params, buffer, batch, epoch):
    """The PS-KD formula with P read from `buffer`, written out."""
    alpha = ALPHA_T * (np.floor(epoch) + 1) / NUM_EPOCHS
    targets = (1 - alpha) * jax.nn.one_hot(batch["labels"], 10) + alpha * buffer[batch["index"]]
    log_probs = jax.nn.log_softmax(nnx.merge(graphdef, params)(batch["inputs"]).logits)
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def test_loss_and_gradient_use_the_buffer(setup):
    recipe, graphdef, params, buffer, batch = setup
    batch = dict(batch, epoch=jnp.asarray(2.3))

    def recipe_loss(params):
        return recipe.loss(nnx.merge(graphdef, params), None, buffer, batch, None)[0]

    got, got_grad = jax.jit(jax.value_and_grad(recipe_loss))(params)
    want, want_grad = jax.jit(jax.value_and_grad(lambda p: _expected_loss(graphdef, p, buffer, batch, 2.3)))(params)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    # The guard: the current predictions as P would give another loss.
    current = jax.nn.softmax(nnx.merge(graphdef, params)(batch["inputs"]).logits)
    other = buffer.at[batch["index"]].set(current)
    assert abs(float(_expected_loss(graphdef, params, other, batch, 2.3)) - float(want)) > 1e-2


def test_the_step_at_a_later_epoch_trains_on_the_buffer_and_then_overwrites_it(setup):
    recipe, graphdef, params, buffer, batch = setup
    optimizer = optax.sgd(1.0)
    _, state = create_train_state(nnx.merge(graphdef, params), optimizer, buffer)
    state = state.replace(step=jnp.asarray(9, jnp.int32))  # epoch 9 / 4 = 2.25 -> alpha_t = 0.6
    step = make_train_step(graphdef, recipe, optimizer, seed=0, steps_per_epoch=4)
    current = np.asarray(jax.nn.softmax(nnx.merge(graphdef, params)(batch["inputs"]).logits))
    want, want_grad = jax.jit(jax.value_and_grad(lambda p: _expected_loss(graphdef, p, buffer, batch, 2.25)))(params)
    before = jax.tree.map(np.asarray, state.params)
    expected_buffer = np.asarray(buffer).copy()
    expected_buffer[np.asarray(batch["index"])] = current
    new_state, metrics = step(state, None, batch)
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(metrics["alpha"]) == pytest.approx(0.6)
    for b, a, g in zip(
        jax.tree.leaves(before), jax.tree.leaves(new_state.params), jax.tree.leaves(want_grad), strict=True
    ):
        np.testing.assert_allclose(b - np.asarray(a), np.asarray(g), atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(new_state.recipe_state), expected_buffer, atol=1e-6)

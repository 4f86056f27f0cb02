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


@pytest.mark.parametrize("micro", [2, 4])
def test_an_accumulated_step_equals_the_full_batch_step(setup, micro):
    """Gradient accumulation: the buffer is written once per optimizer step with the whole batch's predictions (at
    the parameters before the step) and the update is the full batch's mean-loss gradient, so loss, gradient norm,
    parameters and buffer equal the full batch's after two steps, the second at the next epoch reading rows the
    first wrote. (SGD: a gradient of another scale moves the parameters differently.)"""
    recipe, graphdef = setup[:2]
    rng = np.random.default_rng(1)
    buffer = rng.dirichlet(np.ones(10) * 0.3, NUM_EXAMPLES).astype(np.float32)  # the fixture's were donated
    order = rng.permutation(NUM_EXAMPLES)[:8]
    batches = [
        {
            "inputs": jnp.asarray(rng.random((8, 8, 8, 1)), jnp.float32),
            "labels": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
            "index": jnp.asarray(indices, jnp.int32),
        }
        for indices in (order, order[::-1])  # the second step reads the first step's writes, in another order
    ]
    optimizer = optax.sgd(0.5)
    runs = []
    for accumulate in (1, micro):
        _, state = create_train_state(Transformer(CONFIG, rngs=nnx.Rngs(0)), optimizer, jnp.asarray(buffer))
        state = state.replace(step=jnp.asarray(3, jnp.int32))  # epochs 1.5 and 2.0: alpha_t 0.4, then 0.6
        step = make_train_step(graphdef, recipe, optimizer, seed=0, steps_per_epoch=2, grad_accum_steps=accumulate)
        predictions, logged = [], []
        for batch in batches:
            predictions.append(np.asarray(jax.nn.softmax(nnx.merge(graphdef, state.params)(batch["inputs"]).logits)))
            state, metrics = step(state, None, batch)
            logged.append([float(metrics[key]) for key in ("loss", "grad_norm", "alpha")])
        runs.append((state, predictions, logged))
    (full, full_predictions, full_logged), (accumulated, _, logged) = runs
    np.testing.assert_allclose(logged, full_logged, rtol=1e-5)
    assert [alpha for *_, alpha in full_logged] == pytest.approx([0.4, 0.6])
    for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(accumulated.recipe_state), np.asarray(full.recipe_state), atol=1e-6)
    expected = buffer.copy()
    expected[order[::-1]] = full_predictions[1]  # every row of the batch: the second step's pre-update softmax
    np.testing.assert_allclose(np.asarray(full.recipe_state), expected, atol=1e-6)

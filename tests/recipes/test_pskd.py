"""PS-KD: one-hot targets at epoch 0, targets sum to 1 and follow the formula, the buffer holds the last epoch's
predictions at the right indices, and the preset runs end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import TrainConfig, load_config
from jdistill.data import classification_train_dataset
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.base import RunFacts
from jdistill.recipes.pskd import ProgressiveSelfKD
from jdistill.train import create_train_state, make_train_step
from jdistill.train.job import run_job
from jdistill.train.optim import make_optimizer
from tests.recipes.family_a import tiny_job, train_log

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _batch(num=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "labels": jnp.asarray(rng.integers(0, 10, num), jnp.int32),
        "index": jnp.asarray(rng.permutation(20)[:num], jnp.int32),
    }


def test_targets_are_one_hot_at_epoch_zero():
    recipe = ProgressiveSelfKD(alpha_T=0.8, num_epochs=10, num_examples=20)
    buffer = recipe.init(nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))[1], None, None)[1]
    assert buffer.shape == (20, 10)
    batch = _batch()
    for epoch in (0.0, 0.7):  # still epoch 0, and any unwritten row reads as the one-hot label
        targets, alpha = recipe.targets(buffer, dict(batch, epoch=jnp.asarray(epoch)))
        np.testing.assert_allclose(targets, np.eye(10)[batch["labels"]])
        assert float(alpha) == pytest.approx(0.08)


@pytest.mark.parametrize("epoch, alpha", [(2.5, 0.8 * 3 / 10), (9.0, 0.8), (30.0, 0.8)])
def test_targets_mix_labels_and_the_buffer_and_sum_to_one(epoch, alpha):
    recipe = ProgressiveSelfKD(alpha_T=0.8, num_epochs=10, num_examples=20)
    rng = np.random.default_rng(1)
    buffer = rng.dirichlet(np.ones(10), 20).astype(np.float32)
    batch = dict(_batch(), epoch=jnp.asarray(epoch))
    targets, got_alpha = recipe.targets(jnp.asarray(buffer), batch)
    expected = (1 - alpha) * np.eye(10)[batch["labels"]] + alpha * buffer[batch["index"]]
    assert float(got_alpha) == pytest.approx(alpha)
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)


def test_buffer_holds_the_last_epochs_predictions_at_the_right_indices():
    rng = np.random.default_rng(0)
    source = [
        {"image": rng.integers(0, 256, (8, 8, 1), np.uint8), "label": int(rng.integers(0, 10))} for _ in range(20)
    ]
    dataset = classification_train_dataset(source, seed=0, batch_size=5)  # 4 steps per epoch
    recipe = ProgressiveSelfKD(alpha_T=0.8, num_epochs=3, num_examples=20)
    optimizer = make_optimizer(TrainConfig(steps=8, warmup_steps=0, learning_rate=1e-2))
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, optimizer, recipe.init(nnx.split(model)[1], None, None)[1])
    step = make_train_step(graphdef, recipe, optimizer, seed=0, steps_per_epoch=4)
    expected = np.zeros((20, 10), np.float32)
    predict = jax.jit(lambda p, x: jax.nn.softmax(nnx.merge(graphdef, p)(x).logits))
    for index in range(8):  # two epochs: the second epoch's reads see the first epoch's writes
        batch = dataset[index]
        before = np.asarray(predict(state.params, batch["inputs"]))
        state, metrics = step(state, None, batch)
        expected[batch["index"]] = before
        if index == 3:
            np.testing.assert_allclose(np.asarray(state.recipe_state), expected, atol=1e-5)
            assert float(metrics["alpha"]) == pytest.approx(0.8 / 3)  # epoch 0 of 3
    assert float(metrics["alpha"]) == pytest.approx(0.8 * 2 / 3)
    np.testing.assert_allclose(np.asarray(state.recipe_state), expected, atol=1e-5)
    assert not np.allclose(expected.sum(-1), 0.0)


def test_the_job_binds_the_split_size_and_epoch_budget():
    facts = RunFacts(total_steps=100, steps_per_epoch=25.0, num_examples=1437, batch_size=64)
    bound = ProgressiveSelfKD().bind(facts)
    assert (bound.num_examples, bound.num_epochs) == (1437, 4.0)
    assert ProgressiveSelfKD(num_epochs=9).bind(facts).num_epochs == 9
    with pytest.raises(ValueError, match="bind"):
        ProgressiveSelfKD().init(nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))[1], None, None)


def test_preset_learns_and_moves_to_the_previous_epochs_targets(tmp_path, untrained):
    # 30 steps of 64 examples: the first epoch (1437 examples) ends at step 23, E = 30 * 64 / 1437 epochs
    config = load_config(
        "pskd",
        tiny_job(
            "student.train.batch_size=64", "student.train.learning_rate=0.01", "student.train.log_every=1", steps=30
        ),
    )
    summary = run_job(config, tmp_path / "run", progress=False)
    assert set(summary) >= {"student_pskd"} and "teacher" not in summary
    student, before = summary["student_pskd"], untrained(config)
    alphas = train_log(tmp_path / "run", "student_pskd", "alpha")
    assert student["accuracy"] > before["accuracy"] + 0.15 and student["nll"] < before["nll"] - 0.4
    # alpha_t = 0.8 (epoch + 1) / E: epoch 0 until the split is seen once, then the cap 0.8
    epochs = 30 * 64 / 1437
    np.testing.assert_allclose(alphas[:22], 0.8 / epochs, rtol=1e-5)
    np.testing.assert_allclose(alphas[23:], 0.8, rtol=1e-5)

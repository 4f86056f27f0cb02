"""Snapshot teachers: snapshots are taken every `snapshot_every` steps into a ring of K, the teacher is the mean
(or vote) of the snapshots' probabilities, distillation starts once K snapshots exist, and the preset runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import TrainConfig, load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.snapshot_kd import SnapshotKD
from jdistill.train import create_train_state, make_train_step
from jdistill.train.job import run_job
from jdistill.train.optim import make_optimizer
from tests.recipes.family_a import tiny_job, train_log

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.random((6, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 6).astype(np.int32)}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _slot(stack, index):
    return [np.asarray(x)[index] for x in jax.tree.leaves(stack)]


def test_snapshots_are_taken_every_n_steps_into_a_ring():
    recipe = SnapshotKD(num_snapshots=2, snapshot_every=2)
    optimizer = make_optimizer(TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2))
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, optimizer, recipe.init(nnx.split(model)[1], None, None)[1])
    step = make_train_step(graphdef, recipe, optimizer, seed=0)
    after, active = {}, {}
    for index in range(1, 7):
        state, metrics = step(state, None, _batch(index))
        after[index] = _leaves(state.params)
        active[index] = float(metrics["teacher_active"])
    assert int(state.recipe_state["taken"]) == 3  # steps 2, 4, 6
    snapshots = state.recipe_state["snapshots"]
    # step 6 overwrote step 2
    assert all(np.array_equal(a, b) for a, b in zip(_slot(snapshots, 0), after[6], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(_slot(snapshots, 1), after[4], strict=True))
    # The loss of step k sees the state after step k - 1: two snapshots exist from step 5 on.
    assert [active[k] for k in range(1, 7)] == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("method", ["mean", "vote"])
def test_teacher_is_the_ensemble_of_the_snapshots(method):
    recipe = SnapshotKD(num_snapshots=3, temperature=2.0, method=method)
    models = [Transformer(CONFIG, rngs=nnx.Rngs(seed)) for seed in range(3)]
    graphdef = nnx.split(models[0])[0]
    stack = jax.tree.map(lambda *p: jnp.stack(p), *[nnx.split(m)[1] for m in models])
    teacher = nnx.merge(graphdef, recipe.teacher_params({"snapshots": stack}, None))
    batch = _batch()
    got = np.exp(np.asarray(recipe.teacher_log_probs(teacher, batch["inputs"])))
    probs = np.stack([np.asarray(jax.nn.softmax(m(batch["inputs"]).logits / 2.0)) for m in models])
    if method == "mean":
        np.testing.assert_allclose(got, probs.mean(0), rtol=1e-5, atol=1e-6)
    else:
        votes = np.stack([np.bincount(col, minlength=10) for col in probs.argmax(-1).T])
        assert np.all(votes[np.arange(6), got.argmax(-1)] == votes.max(-1)) and np.allclose(got.sum(-1), 1.0)


def test_loss_adds_the_distillation_term_only_when_the_ring_is_full():
    recipe = SnapshotKD(num_snapshots=2, temperature=2.0, distill_weight=0.5, label_weight=1.0)
    student, other = Transformer(CONFIG, rngs=nnx.Rngs(0)), Transformer(CONFIG, rngs=nnx.Rngs(1))
    graphdef = nnx.split(student)[0]
    stack = jax.tree.map(lambda *p: jnp.stack(p), nnx.split(student)[1], nnx.split(other)[1])
    teacher = nnx.merge(graphdef, stack)
    batch = _batch()
    losses = {}
    for taken in (1, 2):
        (total, count), metrics, _ = recipe.loss(
            student, teacher, {"snapshots": stack, "taken": jnp.asarray(taken)}, batch, jax.random.key(0)
        )
        losses[taken] = float(total / count)
    assert losses[1] == pytest.approx(float(metrics["ce"]), rel=1e-6)
    assert losses[2] == pytest.approx(float(metrics["ce"] + 0.5 * metrics["distill"]), rel=1e-6)
    assert float(metrics["distill"]) > 0


def test_preset_learns_and_distils_once_the_ring_is_full(tmp_path, untrained):
    config = load_config(
        "snapshot_kd",
        tiny_job(
            "distill.options.snapshot_every=5",
            "distill.options.num_snapshots=2",
            "student.train.learning_rate=0.01",
            "student.train.log_every=1",
            steps=30,
        ),
    )
    summary = run_job(config, tmp_path / "run", progress=False)
    assert "teacher" not in summary
    student, before = summary["student_snapshot_kd"], untrained(config)
    active = train_log(tmp_path / "run", "student_snapshot_kd", "teacher_active")
    distill = train_log(tmp_path / "run", "student_snapshot_kd", "distill")
    assert student["accuracy"] > before["accuracy"] + 0.15 and student["nll"] < before["nll"] - 0.4
    # snapshots after steps 5 and 10: the loss of step 11 is the first with a full ring
    assert active == [0.0] * 10 + [1.0] * 20 and min(distill[10:]) > 0

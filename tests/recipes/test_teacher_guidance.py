"""Guided self-distillation (deep form): the loss is CE to alpha*onehot + (1-alpha)*p_teacher, the probe alpha is
the grid-best mix of two explicit ridge probes, its running mean freezes after `probe_batches`, and the preset
trains two guided generations end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.teacher_guidance import TeacherGuidance
from jdistill.train.job import run_job
from tests.recipes.family_a import tiny_job, train_log

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _state(alpha_sum=0.0, estimates=0):
    return {"alpha_sum": jnp.asarray(alpha_sum, jnp.float32), "estimates": jnp.asarray(estimates, jnp.int32)}


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_fixed_alpha_loss_is_cross_entropy_to_the_guided_target(alpha):
    student, teacher = Transformer(CONFIG, rngs=nnx.Rngs(0)), Transformer(CONFIG, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.random((6, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 6).astype(np.int32)}
    (total, count), metrics, statistics = TeacherGuidance(alpha=alpha).loss(
        student, teacher, _state(), batch, jax.random.key(0)
    )
    p_t = np.exp(_log_softmax(np.asarray(teacher(batch["inputs"]).logits, np.float64)))
    target = alpha * np.eye(10)[batch["labels"]] + (1 - alpha) * p_t
    expected = -(target * _log_softmax(np.asarray(student(batch["inputs"]).logits, np.float64))).sum(-1).mean()
    np.testing.assert_allclose(float(total / count), expected, rtol=1e-5)
    assert float(metrics["alpha"]) == pytest.approx(alpha) and statistics == ()  # a fixed alpha keeps no state


def test_probe_alpha_is_the_grid_best_mix_of_two_ridge_probes():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(20, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 20)
    teacher_logits = (features @ rng.normal(size=(6, 4)) + 2 * np.eye(4)[labels]).astype(np.float32)
    recipe = TeacherGuidance(probe_ridge=0.5)
    alpha = float(recipe.batch_alpha(jnp.asarray(features), jnp.asarray(teacher_logits), jnp.asarray(labels)))

    def probe(targets):  # explicit ridge with intercept on the first half, predicting the second half
        design = np.concatenate([features, np.ones((20, 1))], 1).astype(np.float64)
        weights = np.linalg.solve(design[:10].T @ design[:10] + 0.5 * np.eye(7), design[:10].T @ targets[:10])
        return design[10:] @ weights

    onehot, p_t = np.eye(4)[labels], np.exp(_log_softmax(teacher_logits.astype(np.float64)))
    grid = np.linspace(0, 1, 1001)
    errors = [np.sum((probe(a * onehot + (1 - a) * p_t) - onehot[10:]) ** 2) for a in grid]
    assert abs(alpha - grid[int(np.argmin(errors))]) <= 2e-3


def test_alpha_is_the_running_mean_of_the_first_probe_batches():
    """The loss uses the mean of the earlier steps' estimates (its own batch's at the first step); each step adds
    its whole batch's estimate once, while probing."""
    recipe = TeacherGuidance(probe_batches=2)
    output = type("Output", (), {})()
    rng = np.random.default_rng(0)
    output.features, output.logits = jnp.asarray(rng.normal(size=(8, 5))), jnp.asarray(rng.normal(size=(8, 3)))
    labels = jnp.asarray(rng.integers(0, 3, 8))
    estimate = float(recipe.batch_alpha(output.features, output.logits, labels))
    assert float(recipe.current_alpha(_state(), output, labels)) == pytest.approx(estimate)  # first step: its own
    assert float(recipe.current_alpha(_state(0.5, 1), output, labels)) == pytest.approx(0.5)  # the earlier mean
    statistics = {"features": output.features, "logits": output.logits, "labels": labels}
    state = recipe.update_state(_state(0.5, 1), statistics)
    assert float(state["alpha_sum"]) == pytest.approx(0.5 + estimate) and int(state["estimates"]) == 2
    frozen = recipe.update_state(state, statistics)  # probing is over: the state no longer moves
    assert float(frozen["alpha_sum"]) == float(state["alpha_sum"]) and int(frozen["estimates"]) == 2
    assert float(recipe.current_alpha(frozen, output, labels)) == pytest.approx((0.5 + estimate) / 2)


def test_preset_trains_guided_generations_end_to_end(tmp_path, pretrained_teacher, untrained):
    config = load_config(
        "teacher_guidance",
        tiny_job(
            "distill.options.probe_batches=2",
            *pretrained_teacher,
            "student.train.learning_rate=0.01",
            "student.train.log_every=1",
            steps=30,
        ),
    )
    summary = run_job(config, tmp_path / "run", progress=False)
    generations = ["student_teacher_guidance_gen1", "student_teacher_guidance_gen2"]
    assert set(generations) <= set(summary)
    before = untrained(config)
    for stage in generations:
        alphas = train_log(tmp_path / "run", stage, "alpha")
        assert summary[stage]["accuracy"] > before["accuracy"] + 0.15
        # step 1 uses its own batch's estimate, step 2 the mean of step 1's, and from step 3 on the mean of the 2
        # probe batches' estimates, frozen for the rest of the generation
        assert alphas[1] == pytest.approx(alphas[0])
        assert 0.0 <= alphas[2] <= 1.0 and alphas[3:] == [alphas[2]] * (len(alphas) - 3)

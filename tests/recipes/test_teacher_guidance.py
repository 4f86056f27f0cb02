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
    """The loss uses the mean of the earlier steps' estimates (1, the labels alone, at the first step: never its
    own batch's, which a micro-batch could not see whole); each step adds its whole batch's estimate once, while
    probing."""
    recipe = TeacherGuidance(probe_batches=2)
    output = type("Output", (), {})()
    rng = np.random.default_rng(0)
    output.features, output.logits = jnp.asarray(rng.normal(size=(8, 5))), jnp.asarray(rng.normal(size=(8, 3)))
    labels = jnp.asarray(rng.integers(0, 3, 8))
    estimate = float(recipe.batch_alpha(output.features, output.logits, labels))
    assert float(recipe.current_alpha(_state())) == 1.0  # the first step: no estimate yet
    assert float(recipe.current_alpha(_state(0.5, 1))) == pytest.approx(0.5)  # the earlier mean
    statistics = {"features": output.features, "logits": output.logits, "labels": labels}
    state = recipe.update_state(_state(0.5, 1), statistics)
    assert float(state["alpha_sum"]) == pytest.approx(0.5 + estimate) and int(state["estimates"]) == 2
    frozen = recipe.update_state(state, statistics)  # probing is over: the state no longer moves
    assert float(frozen["alpha_sum"]) == float(state["alpha_sum"]) and int(frozen["estimates"]) == 2
    assert float(recipe.current_alpha(frozen)) == pytest.approx((0.5 + estimate) / 2)


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
        # step 1 trains on the labels (no estimate yet), step 2 uses step 1's estimate, and from step 3 on the mean of
        # the 2 probe batches' estimates, frozen for the rest of the generation
        assert alphas[0] == 1.0 and 0.0 <= alphas[1] <= 1.0
        assert 0.0 <= alphas[2] <= 1.0 and alphas[3:] == [alphas[2]] * (len(alphas) - 3)


@pytest.mark.parametrize("micro", [2, 4])
def test_an_accumulated_step_equals_the_full_batch_step(micro):
    """Gradient accumulation: each probing step adds one estimate of alpha from its whole batch (not one per
    micro-batch, nor a micro-batch's), and the loss sum is divided by the whole batch's example count, so loss,
    gradient norm, alpha, parameters and state equal the full batch's over two probing steps and one after.
    (SGD: a gradient of another scale moves the parameters differently.)"""
    import optax

    from jdistill.train import make_train_step
    from tests.recipes.ssl_robust_helpers import batch, leaves, prepared_state

    recipe = TeacherGuidance(probe_batches=2)
    teacher_graphdef, teacher_params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(3)))
    runs = []
    for accumulate in (1, micro):
        graphdef, state, optimizer = prepared_state(
            recipe, Transformer(CONFIG, rngs=nnx.Rngs(0)), teacher_params, optimizer=optax.sgd(0.5)
        )
        step = make_train_step(
            graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef, grad_accum_steps=accumulate
        )
        logged = []
        for seed in range(3):
            state, metrics = step(state, teacher_params, batch(seed, size=16))
            logged.append([float(metrics[key]) for key in ("loss", "grad_norm", "alpha")])
        runs.append((state, logged))
    (full, full_logged), (accumulated, logged) = runs
    np.testing.assert_allclose(logged, full_logged, rtol=1e-5)
    assert int(full.recipe_state["estimates"]) == 2 and len({alpha for *_, alpha in full_logged}) > 1
    np.testing.assert_allclose(accumulated.recipe_state["alpha_sum"], full.recipe_state["alpha_sum"], rtol=1e-5)
    assert int(accumulated.recipe_state["estimates"]) == 2
    for a, b in zip(leaves(accumulated.params), leaves(full.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

"""DCS recipe: constant agreement keeps the weights uniform, a disagreeing example gains exp(eta) relative weight,
the loss is the weighted KD mix, an accumulated step equals the full batch, and the preset runs end to end."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.losses import kd
from jdistill.recipes.dcs import DynamicCorrectiveSelfDistillation as DCS
from jdistill.train.job import run_job
from tests.recipes.family_a import train_log
from tests.recipes.ssl_robust_helpers import FAST, batch, tiny_job, tiny_model

N = 8
STEPS = 40


def _fixed(logits):
    """A stand-in teacher that returns fixed logits."""
    return lambda inputs: types.SimpleNamespace(logits=jnp.asarray(logits))


def _run(recipe, teacher, state, data, model=None):
    """(weighted mean loss, metrics, the state after this step's update) for one batch."""
    (total, count), metrics, statistics = recipe.loss(
        model or tiny_model(), teacher, state, dict(data, epoch=jnp.zeros(())), None
    )
    return total / count, metrics, recipe.update_state(state, statistics)


def test_constant_agreement_keeps_the_weights_uniform():
    recipe = DCS(num_examples=20, eta=1.0)
    _, state = recipe.init(None, None, None)
    model = tiny_model()
    for seed in range(3):  # the teacher is the student itself: argmax always agrees
        _, metrics, state = _run(recipe, model, state, batch(seed, num_examples=20), model)
        assert float(metrics["disagreement"]) == 0.0
    np.testing.assert_allclose(state["weights"], np.ones(20), rtol=1e-6)


def test_uniform_disagreement_over_the_whole_table_also_keeps_them_uniform():
    recipe = DCS(num_examples=N, eta=1.0)
    _, state = recipe.init(None, None, None)
    data = batch(0, size=N, num_examples=N)  # every example of the table, all disagreeing
    student = np.asarray(tiny_model()(data["inputs"]).logits)
    teacher = 10 * np.eye(10)[(student.argmax(-1) + 1) % 10]
    _, metrics, state = _run(recipe, _fixed(teacher), state, data)
    assert float(metrics["disagreement"]) == 1.0
    np.testing.assert_allclose(state["weights"], np.ones(N), rtol=1e-6)


def test_a_disagreeing_example_gains_weight_exp_eta_and_the_loss_is_the_weighted_mix():
    recipe = DCS(num_examples=N, eta=0.7, distill_weight=0.3, temperature=2.0)
    _, state = recipe.init(None, None, None)
    data = batch(0, size=N, num_examples=N)
    student = np.asarray(tiny_model()(data["inputs"]).logits)
    teacher = student.copy()
    wrong = int(np.flatnonzero(data["index"] == 3)[0])
    teacher[wrong] = np.eye(10)[(student[wrong].argmax() + 1) % 10] * 10
    loss, _, state = _run(recipe, _fixed(teacher), state, data)
    weights = np.asarray(state["weights"])
    assert weights.mean() == pytest.approx(1.0)
    assert weights[3] / weights[0] == pytest.approx(np.exp(0.7), rel=1e-5)
    per_example = kd(
        student, teacher, data["labels"], temperature=2.0, distill_weight=0.3, label_weight=0.7, reduction="none"
    )
    assert float(loss) == pytest.approx(float(np.mean(per_example)), rel=1e-5)  # uniform weights before the update
    loss, _, _ = _run(recipe, _fixed(teacher), state, data)
    w = weights[data["index"]]
    assert float(loss) == pytest.approx(float((w * per_example).sum() / w.sum()), rel=1e-5)


def test_accumulated_dcs_step_equals_the_full_batch_step():
    """One weight update per optimizer step from the whole batch, and the weighted loss normalised by the whole
    batch's weight: two micro-batches give the full batch's weights and parameters (over steps whose weights
    differ)."""
    from jdistill.train import make_train_step
    from tests.recipes.ssl_robust_helpers import leaves, prepared_state

    recipe = DCS(num_examples=N, eta=1.0, kind="kl")
    teacher_graphdef, teacher_params = nnx.split(tiny_model(seed=3))
    results = []
    for accumulate in (1, 2):
        graphdef, state, optimizer = prepared_state(recipe, tiny_model())
        step = make_train_step(
            graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef, grad_accum_steps=accumulate
        )
        for seed in range(3):
            state, _ = step(state, teacher_params, batch(seed, size=N, num_examples=N))
        results.append(state)
    full, accumulated = results
    assert np.ptp(np.asarray(full.recipe_state["weights"])) > 1e-3  # the weights did move apart
    np.testing.assert_allclose(accumulated.recipe_state["weights"], full.recipe_state["weights"], rtol=1e-5)
    for a, b in zip(leaves(accumulated.params), leaves(full.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dcs_preset_learns_from_a_trained_teacher_and_reweights_disagreements(tmp_path, pretrained_teacher, untrained):
    config = load_config("dcs", tiny_job(steps=STEPS, extra=[*pretrained_teacher, *FAST]))
    summary = run_job(config, tmp_path / "run", progress=False)
    student, before = summary["student_dcs"], untrained(config)
    assert student["accuracy"] > before["accuracy"] + 0.15 and student["nll"] < before["nll"] - 0.4
    # the untrained student disagrees with the teacher, so the table moves off uniform (mean 1, max above it)
    disagreement = train_log(tmp_path / "run", "student_dcs", "disagreement")
    assert disagreement[0] > 0.5 and disagreement[-1] < disagreement[0]
    assert min(train_log(tmp_path / "run", "student_dcs", "max_weight")) > 1.1

"""Defensive distillation: both sides of the objective are softened at T (the teacher's logits rescaled as if it
were trained at T), and extra_metrics reports FGSM / PGD accuracy at T = 1 no higher than clean accuracy."""

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.recipes.defensive import DefensiveDistillation
from jdistill.train.job import run_job
from tests.recipes.family_a import tiny_job


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature, trained_at", [(20.0, 20.0), (5.0, 5.0), (20.0, 1.0)])
def test_objective_softens_teacher_and_student_at_T(temperature, trained_at):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 7, 10)) * 3
    labels = rng.integers(0, 10, 7)
    recipe = DefensiveDistillation(temperature=temperature, teacher_trained_temperature=trained_at)
    total, count = recipe.objective(student.astype(np.float32), teacher.astype(np.float32), labels)
    # A teacher trained at `trained_at` is softened at `trained_at` (its logits rescaled by T / trained_at, then / T).
    p_t = np.exp(_log_softmax(teacher / trained_at))
    expected = -(p_t * _log_softmax(student / temperature)).sum(-1).mean()
    np.testing.assert_allclose(float(total / count), expected, rtol=1e-5)
    at_one = -(p_t * _log_softmax(student)).sum(-1).mean()
    assert not np.isclose(expected, at_one)  # the student side really is at T, not at 1


def test_label_weight_mixes_in_the_labels_at_T():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 5, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 5)
    soft = DefensiveDistillation(temperature=10.0, label_weight=0.0).objective(student, teacher, labels)
    mixed = DefensiveDistillation(temperature=10.0, label_weight=0.25).objective(student, teacher, labels)
    hard = -_log_softmax(student / 10.0)[np.arange(5), labels].sum()
    np.testing.assert_allclose(float(mixed[0]), 0.75 * float(soft[0]) + 0.25 * hard, rtol=1e-5)


@pytest.mark.slow  # ~15 s quietly; moved out of the default suite for its 15-minute budget (session 9)
def test_preset_learns_from_a_trained_teacher_and_reports_robust_accuracy_below_clean(
    tmp_path, pretrained_teacher, untrained
):
    config = load_config(
        "defensive",
        tiny_job(
            "distill.options.pgd_steps=3",
            "data.eval_batch_size=128",
            *pretrained_teacher,
            "student.train.learning_rate=0.01",
            steps=40,
        ),
    )
    summary = run_job(config, tmp_path / "run", progress=False)
    metrics, before = summary["student_defensive"], untrained(config)
    assert metrics["clean_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert metrics["accuracy"] > before["accuracy"] + 0.1
    # the attacks find errors the clean images do not: strictly below clean accuracy, PGD at least as strong as FGSM
    assert metrics["pgd_accuracy"] <= metrics["fgsm_accuracy"] < metrics["clean_accuracy"]

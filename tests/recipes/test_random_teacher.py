"""Random-teacher recipe: the teacher never changes, the loss is 0 when student == teacher, the interpolated
initialisation follows its formula, and the preset runs end to end with probe metrics."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig
from jdistill.recipes.random_teacher import RandomTeacher
from jdistill.train import make_train_step
from jdistill.train.job import run_job
from tests.recipes.ssl_robust_helpers import CONFIG, batch, leaves, prepared_state, tiny_job, tiny_model


def _teacher():
    return nnx.split(tiny_model(seed=1))


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_student_init_is_the_variance_preserving_interpolation(a):
    _, teacher_params = _teacher()
    own = nnx.split(tiny_model(seed=0))[1]
    student, state = RandomTeacher(init_alpha=a).init(own, teacher_params, jax.random.key(0))
    assert state == ()
    scale = 1.0 / math.sqrt(2 * a * a - 2 * a + 1)
    for s, t, r in zip(leaves(student), leaves(teacher_params), leaves(own), strict=True):
        np.testing.assert_allclose(s, ((1 - a) * t + a * r) * scale, rtol=1e-6, atol=1e-7)


def test_loss_is_zero_when_the_student_is_a_copy_of_the_teacher():
    graphdef, teacher_params = _teacher()
    recipe = RandomTeacher(init_alpha=0.0)
    student_params, _ = recipe.init(nnx.split(tiny_model())[1], teacher_params, jax.random.key(0))
    student, teacher = nnx.merge(graphdef, student_params), nnx.merge(graphdef, teacher_params)
    loss, metrics, _ = recipe.loss(student, teacher, (), batch(), None)
    assert abs(float(loss)) < 1e-6 and float(metrics["teacher_agreement"]) == 1.0
    loss, _, _ = RandomTeacher(init_alpha=1.0).loss(tiny_model(), teacher, (), batch(), None)
    assert float(loss) > 1e-4  # an independent student disagrees


def test_teacher_params_never_change_while_the_student_learns():
    teacher_graphdef, teacher_params = _teacher()
    before = leaves(teacher_params)
    recipe = RandomTeacher(init_alpha=0.1)
    graphdef, state, optimizer = prepared_state(recipe, tiny_model(), teacher_params)
    student_start = leaves(state.params)
    step = make_train_step(graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef)
    for seed in range(3):
        state, _ = step(state, teacher_params, batch(seed))
    assert all(np.array_equal(a, b) for a, b in zip(before, leaves(teacher_params), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(student_start, leaves(state.params), strict=True))
    assert recipe.teacher_params((), teacher_params) is teacher_params


def test_mismatched_architectures_are_a_config_error_unless_the_init_is_independent():
    _, teacher_params = _teacher()
    other = nnx.split(tiny_model(config=ModelConfig(**{**CONFIG.__dict__, "d_model": 8})))[1]
    with pytest.raises(ConfigError, match=r"student\.model must equal teacher\.model"):
        RandomTeacher(init_alpha=0.5).init(other, teacher_params, None)
    params, _ = RandomTeacher(init_alpha=1.0).init(other, teacher_params, None)
    assert params is other


def test_random_teacher_preset_distils_its_frozen_teacher_from_close_by(tmp_path, data_dir):
    """The student starts near the random teacher (init_alpha 0.1: a KL of 0.015-0.025, not 0) and distils it:
    in 40 steps the KL falls 8-10 fold (seeds 0/1/2: 0.0147 -> 0.0017, 0.0241 -> 0.0031, 0.0252 -> 0.0024).
    The probe accuracies are only checked above chance: at this size and budget they move within the probes'
    noise (seeds 0/1/2, linear probe at the start 0.536, 0.586, 0.594, after 200 steps 0.586, 0.547, 0.617), so
    beating the untrained student is not a claim this run can test.

    The teacher is never trained but is probed (issue 18: the claim compares the two): its probe metrics are those of
    the teacher rebuilt at its init key, on the student's probe halves.

    Broken on purpose: the teacher probed with the student's params, or with its own probe key (other halves); the
    loss sign flipped (the KL grows), the teacher's logits replaced by the student's (the
    KL is 0 from the start), the student initialised independently (far from the teacher at the start)."""
    from tests.recipes.family_a import train_log

    config = load_config(
        "random_teacher", tiny_job(stages=("teacher", "student"), steps=40, extra=["student.train.learning_rate=0.003"])
    )
    summary = run_job(config, tmp_path / "run", progress=False)
    metrics = summary["student_random_teacher"]
    _assert_teacher_probed_at_its_init(config, summary["teacher"], metrics)
    assert 0.2 < metrics["linear_probe_accuracy"] <= 1.0 and 0.2 < metrics["knn_accuracy"] <= 1.0
    kl = train_log(tmp_path / "run", "student_random_teacher", "random_teacher_kl")
    assert 1e-3 < kl[0] < 0.05  # near the teacher, not on it
    assert kl[-1] < 0.25 * kl[0]


def _assert_teacher_probed_at_its_init(config, teacher_metrics, student_metrics):
    import jax
    from flax import nnx

    from jdistill.eval.probes import probe_metrics
    from jdistill.models import Transformer
    from jdistill.train import inputs
    from jdistill.train.job import STUDENT_INIT, TEACHER_INIT
    from jdistill.train.loop import PURPOSE_EXTRA_METRICS, stage_key

    teacher = Transformer(config.teacher.model, rngs=nnx.Rngs(params=stage_key(config.seed, TEACHER_INIT)))
    key = jax.random.fold_in(stage_key(config.seed, STUDENT_INIT), PURPOSE_EXTRA_METRICS)
    expected = probe_metrics(teacher, inputs.eval_batches(config.data, "classifier"), key)
    assert set(teacher_metrics) == {"linear_probe_accuracy", "knn_accuracy", "params", "wall_seconds"}
    for name, value in expected.items():
        assert teacher_metrics[name] == pytest.approx(value, abs=1e-12)
        assert teacher_metrics[name] != student_metrics[name]

"""`probe_curve`: the recipe's probes at every kept checkpoint of a label-free student stage; the last point is the
stage's own final metric (same probe key and halves), earlier points are earlier parameters."""

import pytest

from jdistill.configs import load_config
from jdistill.errors import RunDirError
from jdistill.repro.probe_curve import probe_curve
from jdistill.train.job import run_job
from tests.recipes.ssl_robust_helpers import tiny_job

KEYS = {"linear_probe_accuracy", "knn_accuracy"}


@pytest.fixture(scope="module")
def random_teacher_run(data_dir, tmp_path_factory):
    """The job of tests/recipes/test_random_teacher.py (same programs: a compilation-cache hit in the suite) with a
    checkpoint every 20 of its 40 student steps, both kept."""
    keep = ["student.train.checkpoint_every=20", "student.train.keep_checkpoints=3"]
    overrides = tiny_job(stages=("teacher", "student"), steps=40, extra=["student.train.learning_rate=0.003", *keep])
    run_dir = tmp_path_factory.mktemp("probe-curve") / "run"
    summary = run_job(load_config("random_teacher", overrides), run_dir, progress=False)
    return run_dir, summary


def test_last_point_is_the_stage_metric_and_every_checkpoint_is_probed(random_teacher_run):
    run_dir, summary = random_teacher_run
    curve = probe_curve(run_dir, "student_random_teacher")
    assert [step for step, _ in curve] == [20, 40]
    assert all(set(metrics) == KEYS for _, metrics in curve)
    final = summary["student_random_teacher"]
    assert curve[-1][1] == {key: final[key] for key in KEYS}
    assert curve[0][1] != curve[-1][1]  # step 20's parameters, not the last ones


def test_not_a_student_stage_or_run_is_one_line(random_teacher_run, tmp_path):
    run_dir, _ = random_teacher_run
    with pytest.raises(RunDirError, match="expected a student stage"):
        probe_curve(run_dir, "teacher")
    with pytest.raises(RunDirError, match=r"no config\.yaml"):
        probe_curve(tmp_path, "student_random_teacher")
    with pytest.raises(RunDirError, match="no checkpoint"):
        probe_curve(run_dir, "student_other")

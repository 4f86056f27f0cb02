"""A run interrupted mid-stage and resumed reproduces the uninterrupted run exactly."""

import json

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.errors import RunDirError
from jdistill.train import run_teacher_student


def _eval_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "eval"]


def _train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"]) for r in records if r["split"] == "train"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_overrides):
    config = load_config("default", tiny_overrides + ["teacher.train.augment=shift"])
    full = run_teacher_student(config, tmp_path / "full")
    resumed_dir = tmp_path / "resumed"
    assert run_teacher_student(config, resumed_dir, interrupt_at=("teacher", 10)) == {}
    assert not (resumed_dir / "summary.json").exists()
    assert run_teacher_student(config, resumed_dir, resume=True, interrupt_at=("student_kd", 10)) == {}
    resumed = run_teacher_student(config, resumed_dir, resume=True)
    for stage in ("teacher", "student_scratch", "student_kd"):
        for key in ("accuracy", "nll", "ece", "params"):
            assert resumed[stage][key] == full[stage][key], (stage, key)
    assert _eval_records(resumed_dir) == _eval_records(tmp_path / "full")
    full_losses, resumed_losses = _train_losses(tmp_path / "full"), _train_losses(resumed_dir)
    assert [r[:2] for r in resumed_losses] == [r[:2] for r in full_losses]
    np.testing.assert_allclose([r[2] for r in resumed_losses], [r[2] for r in full_losses], rtol=1e-6)


def test_existing_run_dir_is_never_overwritten(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists and is not empty; pass --resume"):
        run_teacher_student(load_config("default", tiny_overrides), run_dir)
    assert (run_dir / "precious.txt").read_text() == "keep me"


def test_resume_without_a_run_is_a_clear_error(tmp_path, tiny_overrides):
    with pytest.raises(RunDirError, match="nothing to resume"):
        run_teacher_student(load_config("default", tiny_overrides), tmp_path / "none", resume=True)

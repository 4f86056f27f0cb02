"""No half-runs: a job that cannot run leaves no run directory that blocks the next attempt (issue 13, item 7).

Checks run before the run directory is created (`jdistill.train.job.check_job`); a user error found later, before
any checkpoint, removes the folder the command created (`jdistill.train.unstarted`); `--run-dir` at a file is one
line. All in-process through `jdistill.cli.main`; nothing trains.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import jdistill.train.job as job
from jdistill.cli import main
from jdistill.errors import DataError

TINY = ["teacher.train.steps=2", "student.train.steps=2", "run.progress=false"]


def train(*args) -> tuple[int, list[str]]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", *args])
    return code, stderr.getvalue().strip().splitlines()


def _fail_in_stage(write=None):
    def run_stage(name, stage_config, *, stage_dir, run_dir, **kwargs):
        if write is not None:
            write(Path(run_dir), Path(stage_dir))
        raise DataError(f"{name}: a data error found inside the stage")

    return run_stage


@pytest.fixture
def stage_fails(monkeypatch, data_dir):
    def install(write=None):
        monkeypatch.setattr(job, "run_stage", _fail_in_stage(write))

    return install


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("mesh.tensor=4096", "mesh"),
        ("mesh.rules.nosuch=tensor", "mesh.rules.nosuch"),
        ("data.name=tfds:surely_not_prepared", "tfds:surely_not_prepared"),
        ("data.name=digts", "data.name"),
    ],
)
def test_checks_before_the_run_dir(tmp_path, stage_fails, override, fragment):
    stage_fails()  # reaching a stage would be a late check
    code, lines = train("--run-dir", str(tmp_path / "run"), override, *TINY)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert "inside the stage" not in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_error_inside_a_stage_before_any_checkpoint_removes_the_new_run_dir(tmp_path, stage_fails):
    stage_fails(lambda run_dir, stage_dir: (run_dir / "metrics.jsonl").write_text(""))
    code, lines = train("--run-dir", str(tmp_path / "run"), *TINY)
    assert code == 2 and lines == ["jdistill: error: teacher: a data error found inside the stage"]
    assert not (tmp_path / "run").exists()
    code, lines = train("--run-dir", str(tmp_path / "run"), *TINY)  # the next attempt is not blocked
    assert "already exists" not in lines[0]


def _checkpoint(run_dir: Path, stage_dir: Path) -> None:
    (stage_dir / "checkpoints" / "1").mkdir(parents=True)
    (stage_dir / "checkpoints" / "1" / "state").write_text("x")


def test_a_run_dir_holding_a_checkpoint_is_kept(tmp_path, stage_fails):
    stage_fails(_checkpoint)
    code, _ = train("--run-dir", str(tmp_path / "run"), *TINY)
    assert code == 2 and (tmp_path / "run" / "teacher" / "checkpoints" / "1" / "state").is_file()


def test_a_folder_the_user_made_is_never_removed(tmp_path, stage_fails):
    stage_fails()
    (tmp_path / "run").mkdir()
    code, _ = train("--run-dir", str(tmp_path / "run"), *TINY)
    assert code == 2 and (tmp_path / "run").is_dir()


def test_resume_never_removes_the_run(tmp_path, stage_fails):
    stage_fails()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("teacher: {train: {steps: 2}}\nstudent: {train: {steps: 2}}\n")
    code, _ = train("--resume", "--run-dir", str(run_dir))
    assert code == 2 and (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("resume", [False, True])
def test_run_dir_at_a_file_is_one_line(tmp_path, resume):
    blocker = tmp_path / "file"
    blocker.write_text("")
    below = (blocker / "sub" / "run", f"not writable ({blocker} is a file)")
    for run_dir, fragment in ((blocker, "is a file, not a folder"), below):
        code, lines = train(*(["--resume"] if resume else []), "--run-dir", str(run_dir))
        assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert blocker.read_text() == ""

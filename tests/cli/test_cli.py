"""The command line: the default job end to end at a tiny size, and one-line user errors (exit 2)."""

import json
import os
import subprocess
import sys

import pytest

from jdistill.configs import load_config
from tests.train.conftest import TINY


def run_cli(*args, env=None, cwd=None):
    # CPU only: a libtpu install (for the ahead-of-time TPU tests) would otherwise probe for a TPU and log to stderr.
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "jdistill.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_default_job_end_to_end_at_tiny_size(tmp_path, untrained):
    run_dir = tmp_path / "run"
    result = run_cli("train", "--run-dir", str(run_dir), *TINY)
    assert result.returncode == 0, result.stderr
    table = {line.split()[0] for line in result.stdout.splitlines() if line.startswith(("teacher ", "student_"))}
    assert table == {"teacher", "student_scratch", "student_kd"}  # the table's rows are the summary.json keys
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"teacher", "student_scratch", "student_kd", "wall_seconds"} <= set(summary)
    for stage in ("teacher", "student_scratch", "student_kd"):
        assert {"accuracy", "nll", "ece", "params"} <= set(summary[stage])
        before = untrained(load_config("default", TINY), "teacher" if stage == "teacher" else "student")
        assert summary[stage]["nll"] < before["nll"] - 0.1, stage  # every stage trained
        assert (run_dir / stage / "checkpoints").is_dir()
        assert any((run_dir / "events" / stage).glob("events.out.tfevents.*"))
    assert summary["student_scratch"]["params"] == summary["student_kd"]["params"] < summary["teacher"]["params"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "learning_curves.png").stat().st_size > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"teacher", "student_scratch", "student_kd"}


def test_config_error_is_one_line(tmp_path):
    assert_one_line_error(
        run_cli("train", "--run-dir", str(tmp_path / "r"), "distill.temprature=2"),
        "distill.temprature",
        "did you mean distill.temperature?",
    )
    assert_one_line_error(run_cli("train", "--config", "nosuch"), "unknown preset")
    assert not (tmp_path / "r").exists()


def test_missing_tfds_dataset_offline_says_how_to_prepare_it(tmp_path):
    result = run_cli(
        "train", "--run-dir", str(tmp_path / "r"), "data.name=tfds:mnist", f"data.dir={tmp_path / 'empty'}", *TINY
    )
    assert_one_line_error(result, "tfds:mnist", "not prepared", "tfds build mnist")


def test_unwritable_run_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run_cli("train", "--run-dir", str(blocker / "run"), *TINY), "not writable")


def test_resume_requires_a_run_dir_and_keeps_the_config(tmp_path):
    assert_one_line_error(run_cli("train", "--resume"), "--resume needs --run-dir")
    assert_one_line_error(run_cli("train", "--resume", "--run-dir", str(tmp_path / "none")), "nothing to resume")


@pytest.mark.parametrize("command", [["info"], ["--help"]])
def test_info_and_help(command):
    result = run_cli(*command)
    assert result.returncode == 0
    assert "jdistill" in result.stdout

"""What a run writes survives: strict JSON (no NaN / Infinity tokens), metrics.jsonl with a partial last line (a
process killed mid-write), TensorBoard events on disk at each log step and shown once per step after a resume."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.eval.report import read_curves
from jdistill.io import strict_json
from jdistill.io.events import ScalarEvents, read_scalars
from jdistill.io.jsonl import read_jsonl
from jdistill.train import run_teacher_student
from jdistill.train.writers import MetricsWriter, truncate_jsonl, write_json_atomic
from tests.train.conftest import TINY

PACKAGE = Path(__file__).parents[2] / "jdistill"

# json.dump(s) calls that do not write a file of a run, or are another owner's: each with its reason.
NOT_RUN_FILES = {
    "jdistill/io/strict_json.py": "the helper itself",
    "jdistill/text/chat.py": "the chat template's tojson filter (renders a prompt)",
    "jdistill/text/bpe.py": "canonical tokenizer JSON for a fingerprint; a config of strings and ints",
    "jdistill/data/corpus_tokenizer.py": "a cache key (hashed)",
    "jdistill/data/lm.py": "a cache key (hashed)",
    "jdistill/scale/compile.py": "jobs passed to a subprocess as argv",
    "jdistill/hf/checkpoint.py": "Hugging Face config.json (finite model sizes; owned by the HF import)",
}


def strict_loads(text: str):
    """json.loads that rejects NaN / Infinity / -Infinity, like a strict JSON reader."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_no_nan_or_infinity(tmp_path):
    data = {
        "nll": float("nan"),
        "x": [math.inf, np.float32("-inf")],
        "n": np.float64(1.5),
        "a": np.array([1.0, np.nan]),
    }
    write_json_atomic(tmp_path / "summary.json", data)
    assert strict_loads((tmp_path / "summary.json").read_text()) == {
        "nll": None,
        "x": [None, None],
        "n": 1.5,
        "a": [1.0, None],
    }
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="Out of range float"):  # a NaN that bypasses `finite` raises, never written
        strict_json.dumps({"x": object()}, default=lambda _: float("nan"))


def test_metrics_lines_are_strict_json(tmp_path):
    writer = MetricsWriter(tmp_path, "student_kd", tensorboard=False)
    writer.write(5, "train", {"loss": np.float32("nan"), "accuracy": np.float32(0.5), "grad_norm": np.float32("inf")})
    writer.close()
    (record,) = [strict_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record == {
        "stage": "student_kd",
        "split": "train",
        "step": 5,
        "loss": None,
        "accuracy": 0.5,
        "grad_norm": None,
    }


def test_every_json_write_goes_through_strict_json():
    """A new json.dump(s) in the package must use `jdistill.io.strict_json` (or say here why it need not)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
                and name not in NOT_RUN_FILES
            ):
                found.append(f"{name}:{node.lineno}")
    assert not found, found


def test_partial_last_line_is_dropped_on_resume_and_skipped_by_readers(tmp_path, capsys):
    writer = MetricsWriter(tmp_path, "teacher", tensorboard=False)
    for step in (5, 10, 15):
        writer.write(step, "eval", {"accuracy": step / 100, "nll": 1.0})
    writer.close()
    path = tmp_path / "metrics.jsonl"
    with path.open("ab") as f:
        f.write(b'{"stage": "teacher", "split": "ev')  # the process was killed mid-write
    assert read_curves(path)["teacher"]["step"] == [5, 10, 15]
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    truncate_jsonl(path, "teacher", 10)  # resuming from the checkpoint at step 10
    assert [strict_loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]
    writer = MetricsWriter(tmp_path, "teacher", tensorboard=False, first_step=11)
    writer.write(15, "eval", {"accuracy": 0.2, "nll": 0.9})
    writer.close()
    assert [r["step"] for r in read_jsonl(path)] == [5, 10, 15]
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 3


def _tensorboard_scalars(logdir, tag):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(str(logdir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]  # a step shown twice is listed twice


def test_events_are_on_disk_at_each_step_without_close(tmp_path):
    events = ScalarEvents(tmp_path / "events" / "teacher")
    events.scalars(5, {"train/loss": 2.0})
    events.scalars(10, {"train/loss": 1.5})  # no close: the process is killed here
    assert read_scalars(tmp_path / "events" / "teacher") == {"train/loss": {5: 2.0, 10: 1.5}}
    assert _tensorboard_scalars(tmp_path / "events" / "teacher", "train/loss") == [(5, 2.0), (10, 1.5)]


def test_resumed_events_show_each_step_once(tmp_path):
    logdir = tmp_path / "events" / "teacher"
    killed = ScalarEvents(logdir)
    for step in (5, 10, 15):  # checkpoint at 10, killed after logging 15
        killed.scalars(step, {"train/loss": float(step)})
    resumed = ScalarEvents(logdir, first_step=11)
    for step in (15, 20):
        resumed.scalars(step, {"train/loss": -float(step)})
    resumed.close()
    expected = {5: 5.0, 10: 10.0, 15: -15.0, 20: -20.0}
    assert read_scalars(logdir) == {"train/loss": expected}
    assert _tensorboard_scalars(logdir, "train/loss") == list(expected.items())


@pytest.mark.slow
def test_killed_run_with_a_partial_line_resumes_with_every_step_once(tmp_path, data_dir):
    """A job stopped after logging step 15 of the teacher (checkpoint at 10), with a half-written metrics line, then
    resumed: every file parses, each logged step is in metrics.jsonl and TensorBoard once."""
    config = load_config("default", TINY + ["run.baseline=false"])
    run_dir = tmp_path / "run"
    assert run_teacher_student(config, run_dir, interrupt_at=("teacher", 15)) == {}
    with (run_dir / "metrics.jsonl").open("ab") as f:
        f.write(b'{"stage": "teacher", "split": "train", "step": 1')
    summary = run_teacher_student(config, run_dir, resume=True)
    assert set(summary) >= {"teacher", "student_kd"}
    records = [strict_loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    teacher_train = [r["step"] for r in records if r["stage"] == "teacher" and r["split"] == "train"]
    assert teacher_train == [5, 10, 15, 20]
    strict_loads((run_dir / "summary.json").read_text())
    strict_loads((run_dir / "teacher" / "result.json").read_text())
    assert sorted(read_scalars(run_dir / "events" / "teacher")["train/loss"]) == [5, 10, 15, 20]
    assert [step for step, _ in _tensorboard_scalars(run_dir / "events" / "teacher", "train/loss")] == [5, 10, 15, 20]

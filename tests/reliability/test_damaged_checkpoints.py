"""Damaged state falls back: a truncated, zeroed or deleted file (or folder) inside the newest checkpoint is
detected on resume, warned about in one line naming the step, moved aside to `checkpoints_damaged/`, and the
stage resumes from the newest kept checkpoint, reproducing the uninterrupted run. A garbage `result.json` of a
finished stage is re-evaluated from its checkpoint; `wall_seconds` after a resume count every process."""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.train.job import run_job
from jdistill.train.restore import load_stage_params
from tests.reliability.tiny_job import TINY

ARGS = [*TINY, "teacher.train.steps=30", "run.baseline=false"]  # teacher checkpoints at 10, 20, 30 (keep 2)


def _largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(step: Path) -> None:
    manifest = step / "default" / "manifest.ocdbt"
    os.truncate(manifest, manifest.stat().st_size // 2)


def zero(step: Path) -> None:
    data = _largest(step / "default" / "ocdbt.process_0")
    data.write_bytes(bytes(data.stat().st_size))


def flip_byte(step: Path) -> None:
    """One byte of the largest data file changed: no read error, only the checksums can tell."""
    data = _largest(step / "default" / "ocdbt.process_0")
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0x01
    data.write_bytes(bytes(content))


def delete_file(step: Path) -> None:
    (step / "default" / "_METADATA").unlink()


def delete_folder(step: Path) -> None:
    shutil.rmtree(step / "default" / "d")


DAMAGE = {
    "truncated": truncate,
    "zeroed": zero,
    "flipped_byte": flip_byte,
    "deleted_file": delete_file,
    "deleted_folder": delete_folder,
}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """(the uninterrupted run's dir and summary, a run stopped at teacher step 25: checkpoints 10 and 20)."""
    base = tmp_path_factory.mktemp("damaged")
    config = load_config("default", ARGS)
    full = run_job(config, base / "full")
    assert run_job(config, base / "stopped", interrupt_at=("teacher", 25)) == {}
    return base / "full", full, base / "stopped"


def _params(stage_dir: Path, config):
    return [np.asarray(x) for x in jax.tree.leaves(load_stage_params(stage_dir, config.teacher.model)[1])]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_each_damage_kind_is_detected_and_the_previous_checkpoint_used(runs, tmp_path, capsys, kind):
    _, _, stopped = runs
    config = load_config("default", ARGS)
    good = tmp_path / "good"
    shutil.copytree(stopped / "teacher", good)
    shutil.rmtree(good / "checkpoints" / "20")  # what the fallback must load: step 10
    damaged = tmp_path / "damaged"
    shutil.copytree(stopped / "teacher", damaged)
    DAMAGE[kind](damaged / "checkpoints" / "20")
    capsys.readouterr()
    loaded = _params(damaged, config)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jdistill: warning: damaged: checkpoint at step 20 is damaged ("), err
    assert err[0].endswith("; using step 10")
    for a, b in zip(loaded, _params(good, config), strict=True):
        np.testing.assert_array_equal(a, b)


# TensorStore reads still in flight when the damaged restore failed are collected later, on a closed event loop
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_moves_the_damaged_checkpoint_aside_and_matches_the_full_run(runs, tmp_path, capsys):
    _, full, stopped = runs
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    truncate(run_dir / "teacher" / "checkpoints" / "20")
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "teacher: checkpoint at step 20 is damaged" in warnings[0]
    aside = run_dir / "teacher" / "checkpoints_damaged" / "20"
    assert f"moved it to {aside.absolute()}; using step 10" in warnings[0]
    assert aside.is_dir()
    resumed = json.loads((run_dir / "summary.json").read_text())
    for stage in ("teacher", "student_kd"):
        for key in ("accuracy", "nll", "ece"):
            assert resumed[stage][key] == full[stage][key], (stage, key)
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0  # the moved step is never read again
    assert "warning" not in capsys.readouterr().err


def test_no_checkpoint_that_restores_is_one_line(runs, tmp_path, capsys):
    _, _, stopped = runs
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    for step in ("10", "20"):
        delete_folder(run_dir / "teacher" / "checkpoints" / step)
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no checkpoint of teacher restores (steps 20, 10;" in err
    assert sorted(p.name for p in (run_dir / "teacher" / "checkpoints").iterdir()) == ["10", "20"]  # nothing moved


@pytest.mark.parametrize("garbage", ['{"metr', "null", '{"metrics": {}, "wall_seconds": "x"}', "\x00" * 64])
def test_a_garbage_result_json_is_evaluated_again(runs, tmp_path, capsys, garbage):
    full_dir, full, _ = runs
    run_dir = tmp_path / "run"
    shutil.copytree(full_dir, run_dir)
    (run_dir / "teacher" / "result.json").write_text(garbage)
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher/result.json: unreadable (" in err[0], err
    assert err[0].endswith("evaluating teacher again from its last checkpoint")
    result = json.loads((run_dir / "teacher" / "result.json").read_text())
    for key in ("accuracy", "nll", "ece"):
        assert result["metrics"][key] == full["teacher"][key]


def test_wall_seconds_count_every_process(runs, tmp_path):
    _, _, stopped = runs
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    before_teacher = json.loads((run_dir / "teacher" / "wall.json").read_text())["wall_seconds"]
    before_job = json.loads((run_dir / "wall.json").read_text())["wall_seconds"]
    (run_dir / "teacher" / "wall.json").write_text(json.dumps({"wall_seconds": before_teacher + 1000.0}))
    (run_dir / "wall.json").write_text(json.dumps({"wall_seconds": before_job + 5000.0}))
    summary = run_job(load_config("default", ARGS), run_dir, resume=True)
    assert summary["teacher"]["wall_seconds"] > before_teacher + 1000.0
    assert summary["wall_seconds"] > before_job + 5000.0
    assert summary["student_kd"]["wall_seconds"] < 1000.0  # a stage the earlier process never started

"""SIGKILL at random steps (nothing saved on the way out), once during a checkpoint write: each `--resume`
continues from the newest complete checkpoint, and the finished run equals the uninterrupted one bit for bit
(evaluations, final metrics, parameters). Orbax writes a step into a temporary folder and renames it when
complete, so a killed write is never mistaken for a checkpoint."""

import random
import signal
import time
from pathlib import Path

import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.train.job import run_job
from tests.reliability.tiny_job import TINY, assert_same_run, cli

ARGS = [*TINY, "teacher.train.steps=40", "run.baseline=false"]  # checkpoints every 10 steps


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kill") / "full"
    return run_dir, run_job(load_config("default", ARGS), run_dir)


def _complete(run_dir: Path) -> list[Path]:
    """The finished checkpoints (orbax renames a step's temporary folder to the bare step number when done)."""
    return sorted(p for p in run_dir.glob("*/checkpoints/*") if p.name.isdigit())


def _writing(run_dir: Path) -> bool:
    """Is a checkpoint being written (orbax's temporary step folder present)?"""
    return any("tmp" in p.name for p in run_dir.glob("*/checkpoints/*"))


def kill_after(run_dir: Path, *, lines: int | None = None, during_write: bool = False, resume: bool) -> str:
    """Run the job until its `lines`-th step (or until a checkpoint is being written after one more has been
    completed), then SIGKILL it."""
    args = ["--resume"] if resume else ARGS
    process = cli("train", "--run-dir", str(run_dir), *args, delay=0.02)
    assert process.stdout is not None
    seen = 0
    if during_write:  # a write after a complete checkpoint, so the resume restores one
        deadline = time.monotonic() + 120
        done = len(_complete(run_dir))
        while len(_complete(run_dir)) <= done and time.monotonic() < deadline:
            time.sleep(0.005)
        while not _writing(run_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
    else:
        for line in process.stdout:
            seen += line.startswith("step ")
            if seen == lines:
                break
    caught = _writing(run_dir)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, err[-2000:]
    return "during a write" if caught else f"after {seen} steps"


def test_sigkill_during_a_checkpoint_write_then_resume_is_exact(full_run, tmp_path, capsys):
    full_dir, full = full_run
    run_dir = tmp_path / "run"
    when = kill_after(run_dir, during_write=True, resume=False)
    if when != "during a write":
        pytest.skip(f"the write finished before the kill ({when}); the machine was too fast to catch it")
    assert _complete(run_dir) == [run_dir / "teacher/checkpoints/10"]  # killed while writing step 20
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert_same_run(run_dir, full_dir, full, ARGS)


@pytest.mark.slow  # four processes: ~1 min
def test_sigkill_at_random_steps_then_resume_is_exact(full_run, tmp_path):
    full_dir, full = full_run
    run_dir = tmp_path / "run"
    rng = random.Random(13)
    kills = [kill_after(run_dir, lines=rng.randint(3, 35), resume=False)]
    kills.append(kill_after(run_dir, during_write=True, resume=True))
    kills.append(kill_after(run_dir, lines=rng.randint(10, 40), resume=True))
    process = cli("train", "--run-dir", str(run_dir), "--resume")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, (kills, err[-2000:])
    assert_same_run(run_dir, full_dir, full, ARGS)

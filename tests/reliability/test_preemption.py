"""SIGTERM (preemption, Slurm) and SIGINT (Ctrl-C) during a stage: the step in flight completes, a checkpoint is
saved at that step, the process exits within 10 s with 128 + the signal number and one line giving the resume
command; `jdistill train --run-dir RUN --resume` then finishes the run exactly as if it had never stopped."""

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.train.job import run_job
from jdistill.train.preemption import StopRequests, preempted
from tests.reliability.tiny_job import TINY, assert_same_run, cli

ARGS = [
    *TINY,
    "teacher.train.steps=60",
    "teacher.train.checkpoint_every=50",
    "teacher.train.eval_every=30",
    "run.baseline=false",
]
STOPPED = re.compile(
    r"jdistill: (SIG\w+): teacher stopped after step (\d+), checkpoint saved at (\S+); "
    r"resume with: jdistill train --run-dir (\S+) --resume"
)


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("preemption") / "full"
    return run_dir, run_job(load_config("default", ARGS), run_dir)


def stop_at(run_dir: Path, step: int, signum: int):
    """Start the job, send `signum` while step `step` runs; (exit code, seconds to exit, stderr)."""
    process = cli("train", "--run-dir", str(run_dir), *ARGS, delay=0.03)
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == f"step {step}":
            break
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, time.monotonic() - sent, err


def test_stop_requests_turn_a_signal_into_a_flag_and_restore_the_handlers():
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequests() as stops:
        assert stops.agreed(1) is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stops.agreed(2) == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    message = str(preempted(signal.SIGTERM, "teacher", 7, Path("r x/teacher/checkpoints/7"), Path("r x")))
    assert message.endswith("resume with: jdistill train --run-dir 'r x' --resume")


@pytest.mark.slow  # a subprocess and three jobs: ~20 s on an idle 2-core machine
def test_sigterm_saves_the_step_in_flight_and_resume_is_exact(full_run, tmp_path):
    full_dir, full = full_run
    run_dir = tmp_path / "run"
    code, seconds, err = stop_at(run_dir, 23, signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert seconds < 10
    last = err.strip().splitlines()[-1]
    stopped = STOPPED.fullmatch(last)
    assert stopped, last
    assert "Traceback" not in err
    step = int(stopped[2])
    assert stopped[1] == "SIGTERM" and 23 <= step < 50  # not a checkpoint_every step: saved on the signal
    assert Path(stopped[3]) == (run_dir / "teacher" / "checkpoints" / str(step)).absolute()
    assert Path(stopped[3]).is_dir() and Path(stopped[4]) == run_dir
    assert not (run_dir / "student_kd").exists()
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # restored
    assert_same_run(run_dir, full_dir, full, ARGS)


def test_sigint_stops_the_same_way_with_exit_130(data_dir, tmp_path):
    code, seconds, err = stop_at(tmp_path / "run", 12, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert seconds < 10 and "Traceback" not in err
    stopped = STOPPED.fullmatch(err.strip().splitlines()[-1])
    assert stopped and stopped[1] == "SIGINT" and int(stopped[2]) >= 12
    assert Path(stopped[3]).is_dir()


@pytest.mark.slow  # two processes joined by jax.distributed (gloo), twice: ~1 min
def test_processes_of_a_multi_host_run_stop_after_the_same_step(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"

    def start(i: int, *args: str):
        env = {"JDISTILL_COORDINATOR": f"127.0.0.1:{port}", "JDISTILL_NUM_PROCESSES": "2"}
        return cli("train", "--run-dir", str(run_dir), *args, delay=0.03, env=dict(env, JDISTILL_PROCESS_ID=str(i)))

    processes = [start(i, *ARGS) for i in range(2)]
    assert processes[1].stdout is not None
    for line in processes[1].stdout:
        if line.strip() == "step 23":
            break
    processes[1].send_signal(signal.SIGTERM)  # one host only: the other learns it at the next agreement
    outputs = [p.communicate(timeout=300) for p in processes]
    steps = set()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 143, err[-2000:]
        stopped = STOPPED.fullmatch(err.strip().splitlines()[-1])
        assert stopped, err[-2000:]
        steps.add(int(stopped[2]))
    assert steps == {30}  # the first multiple of MULTIHOST_SYNC_EVERY after the signal, on both
    assert (run_dir / "teacher" / "checkpoints" / "30").is_dir()
    resumed = [start(i, "--resume") for i in range(2)]
    for process in resumed:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["teacher"]["accuracy"] > 0

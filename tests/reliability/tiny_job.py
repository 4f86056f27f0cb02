"""Helpers of the runtime reliability tests: the tiny default job (`tests.train.conftest.TINY`), a CLI
subprocess, batches poisoned with NaN at chosen steps, and the metrics of a run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.train.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def poisoned(steps):
    """A `dataset_fn` whose batches of the given (1-based) steps have NaN inputs."""

    def poison(index, batch):
        if index + 1 in steps:
            return dict(batch, inputs=np.full_like(batch["inputs"], np.nan))
        return batch

    return lambda dataset: dataset.map_with_index(poison)


def records(run_dir: Path, split: str = "train", stage: str | None = None) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines if line.strip()]
    return [r for r in out if r["split"] == split and (stage is None or r["stage"] == stage)]


def cli(*args: str, delay: float = 0.0, env: dict | None = None, **popen) -> subprocess.Popen:
    """`jdistill ARGS` in a subprocess with this checkout first on the path (JAX on CPU), each training batch
    delayed by `delay` seconds and announced as `step N` on stdout (`slow_cli.py`); `env` adds variables."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "slow_cli.py"), str(delay), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


__all__ = ["ROOT", "TINY", "cli", "poisoned", "records"]


def assert_same_run(run_dir: Path, full_dir: Path, full: dict, args: list[str]) -> None:
    """The resumed run `run_dir` of the default preset with `args` equals the uninterrupted `full_dir` (summary
    `full`): final metrics, every evaluation record and the teacher's and student's parameters, bit for bit."""
    import jax

    from jdistill.configs import load_config
    from jdistill.train.restore import load_stage_params

    resumed = json.loads((run_dir / "summary.json").read_text())
    for stage in ("teacher", "student_kd"):
        for key in ("accuracy", "nll", "ece"):
            assert resumed[stage][key] == full[stage][key], (stage, key)
    assert records(run_dir, "eval") == records(full_dir, "eval")
    config = load_config("default", args)
    for stage, model in (("teacher", config.teacher.model), ("student_kd", config.student.model)):
        ours, theirs = (jax.tree.leaves(load_stage_params(d / stage, model)[1]) for d in (run_dir, full_dir))
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""Run directories: created fresh or resumed, never silently overwritten."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import yaml

from jdistill.errors import RunDirError


def default_run_dir(base: Path = Path("runs")) -> Path:
    """A new folder under `runs/` named by the current time."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}-{suffix}"
    return path


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Fail with one line unless `run_dir` can be started (empty or absent) or resumed (has config.yaml)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir}: run directory already exists and is not empty; pass --resume to continue "
            "it or choose another --run-dir"
        )


def prepare_run_dir(run_dir: Path, *, resume: bool) -> Path:
    """Create (or, with `resume`, reopen) a run directory; fail with one line if that is not possible."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{run_dir}: run directory is not writable ({exc.strerror})") from None
    return run_dir


def write_config(run_dir: Path, config_dict: dict) -> None:
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(config_dict, sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")

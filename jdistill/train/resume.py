"""Resume a stage: the newest checkpoint of `stage_dir/checkpoints` that restores, or the finished stage's
`result.json`.

A checkpoint that does not restore (a truncated, zeroed or deleted file inside it: orbax / TensorStore raise on
read) or whose files differ from the checksums written with them (`jdistill.train.checkpoint_digest`) is damaged:
the stage warns in one line, moves it aside to `stage_dir/checkpoints_damaged/STEP` (so it is never listed again)
and resumes from the newest kept checkpoint that restores. When none restores, nothing is moved and the resume
stops with one line (the same failure on every checkpoint usually means the state no longer fits them, not that
they are all damaged). A `result.json` that is not the stage's result (garbage, a partial write) is ignored with a
warning: the finished stage is evaluated again from its last checkpoint.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
from pathlib import Path

import jax
import numpy as np

from jdistill.errors import RunDirError
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.distributed import barrier

DAMAGED_DIR = "checkpoints_damaged"


def warn(message: str) -> None:
    """One warning line on stderr (process 0)."""
    if jax.process_index() == 0:
        print(f"jdistill: warning: {message}", file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    """The root cause's type and first line (orbax wraps TensorStore's error in a longer one)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def _collect_quietly() -> None:
    """Collect what a failed orbax read leaves behind (TensorStore futures whose errors nobody retrieved) now,
    without the asyncio log lines and 'Exception ignored' reports they would print when collected later."""
    logger, hook = logging.getLogger("asyncio"), sys.unraisablehook
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        logger.setLevel(level)
        sys.unraisablehook = hook


def _all_processes_ok(ok: bool) -> bool:
    """True when the restore worked on every process (a damaged shard may be read by one host only)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def move_aside(checkpointer: Checkpointer, step: int, stage_dir: Path) -> Path:
    """Move `step`'s checkpoint folder to `stage_dir/checkpoints_damaged/STEP[.k]` (process 0; all wait)."""
    target = stage_dir / DAMAGED_DIR / str(step)
    k = 1
    while target.exists():
        target, k = target.with_name(f"{step}.{k}"), k + 1
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        checkpointer.step_path(step).rename(target)
    barrier(f"checkpoint_moved_aside_{step}")
    checkpointer.reload()
    return target


def restore_newest(checkpointer: Checkpointer, like, stage_dir: Path, *, stage: str, move: bool = True, read=None):
    """(step, restored state) of the newest checkpoint that restores into `like`'s layout, or (None, like)
    when there is none. Damaged newer ones are warned about (and, with `move`, moved aside). `read(step, like)`:
    how to restore (default: the whole state, `checkpointer.restore`)."""
    read = read or checkpointer.restore
    steps = sorted(checkpointer.all_steps(), reverse=True)
    failures: list[tuple[int, str]] = []
    for step in steps:
        restored, error = None, checkpointer.damage(step)
        if error is None:
            try:
                restored = read(step, like)
            except Exception as exc:  # orbax / TensorStore raise many kinds on a damaged file
                error = _first_line(exc)
        if error is not None:
            _collect_quietly()
        if _all_processes_ok(error is None):
            for bad, bad_error in failures:
                where = move_aside(checkpointer, bad, stage_dir) if move else checkpointer.step_path(bad)
                warn(
                    f"{stage}: checkpoint at step {bad} is damaged ({bad_error}); "
                    f"{'moved it to' if move else 'left it at'} {where}; using step {step}"
                )
            return step, restored
        failures.append((step, error or "the restore failed on another process"))
    if failures:
        bad, error = failures[0]
        listed = ", ".join(str(s) for s, _ in failures)
        raise RunDirError(
            f"{checkpointer.directory}: no checkpoint of {stage} restores (steps {listed}; step {bad}: "
            f"{error}); move the folder aside to train {stage} again from step 0"
        )
    return None, like


def finished_result(stage_dir: Path, stage: str) -> dict | None:
    """The stage's `result.json` ({"metrics": {...}, "wall_seconds": s, ...}), or None (warned) when it is not
    valid JSON of that shape."""
    path = stage_dir / "result.json"
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        valid = (
            isinstance(result, dict)
            and isinstance(result.get("metrics"), dict)
            and isinstance(result.get("wall_seconds"), int | float)
            and math.isfinite(result["wall_seconds"])
        )
        problem = "" if valid else "not a stage result"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = _first_line(exc)
    if problem:
        warn(f"{path}: unreadable ({problem}); evaluating {stage} again from its last checkpoint")
        return None
    return result


def resume_point(checkpointer: Checkpointer, state, stage_dir: Path, total_steps: int, *, resume: bool, stage=""):
    """(start step, state, finished result dict or None, saved info dict): step 0 and `state` when not resuming or
    nothing is saved; the newest checkpoint that restores otherwise (into `state`'s shapes and shardings), with
    the `info` saved beside it; with the stage's `result.json` when its last step is saved, i.e. the stage is
    done."""
    if not resume:
        return 0, state, None, {}
    stage = stage or stage_dir.name
    latest, state = restore_newest(checkpointer, state, stage_dir, stage=stage)
    if latest is None:
        return 0, state, None, {}
    info = checkpointer.info(latest)
    done = finished_result(stage_dir, stage) if latest == total_steps else None
    return latest, state, done, info

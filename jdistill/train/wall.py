"""Wall time across processes: a stage (or a job) resumed after a kill reports the seconds of every process that
worked on it, not only the last one's.

`WallClock(path)` starts from the seconds recorded in `path` (a small JSON file next to the checkpoints) and
adds this process's time; `save()` records the total (process 0, written atomically). Savers call it at each
log line and checkpoint, so a process killed without warning loses at most one log interval of accounting.
A missing or unreadable file counts as 0.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax

from jdistill.train.writers import write_json_atomic


def recorded_seconds(path: Path) -> float:
    """The `wall_seconds` stored in `path`; 0.0 when it is missing or not a finite number >= 0."""
    try:
        value = json.loads(path.read_text())["wall_seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


class WallClock:
    """Seconds recorded in `path` by earlier processes (when `resume`) plus this process's since `started`
    (a `time.perf_counter()` value; default: now)."""

    def __init__(self, path: Path, *, resume: bool, started: float | None = None):
        self.path = path  # a path object (pathlib, or etils.epath for a cloud run directory)
        self.before = recorded_seconds(self.path) if resume else 0.0
        self.started = time.perf_counter() if started is None else started

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def save(self) -> None:
        if jax.process_index() == 0:
            write_json_atomic(self.path, {"wall_seconds": self.total()})

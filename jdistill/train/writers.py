"""Metrics out: `metrics.jsonl` (one JSON object a line) and TensorBoard event files, from process 0 only.

Both are written line by line / event by event and are on disk when `MetricsWriter.write` returns, in a local
folder or a `gs://` run directory (`jdistill.io`); JSON is strict (non-finite numbers as null).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jdistill.io import fs, jsonl, strict_json
from jdistill.io.events import ScalarEvents


def _plain(value: Any) -> float | list:
    return float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()


def truncate_jsonl(path: fs.PathLike, stage: str, after_step: int) -> None:
    """Drop `stage`'s records past `after_step` (written by an interrupted run that is being resumed) and any
    partial line a killed writer left."""
    path = fs.path(path)
    if not path.exists():
        return
    kept = [
        record
        for record in jsonl.read_jsonl(path)
        if not (record.get("stage") == stage and isinstance(record.get("step"), int) and record["step"] > after_step)
    ]
    jsonl.write_jsonl_atomic(path, kept)


class MetricsWriter:
    """Appends `{"stage", "split", "step", **metrics}` lines to `run_dir/metrics.jsonl` and scalars to
    TensorBoard under `run_dir/events/<stage>/` (one TensorBoard run per stage, so curves overlay).

    `first_step`: the first step this process trains; past 1 (a resume) TensorBoard is told to drop the steps from
    there on that an interrupted process wrote (`jdistill.io.events`)."""

    def __init__(self, run_dir: fs.PathLike, stage: str, *, tensorboard: bool = True, first_step: int = 1):
        self.stage = stage
        self.enabled = jax.process_index() == 0
        run_dir = fs.path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.lines = fs.Appender(self.path) if self.enabled else None
        self.tensorboard = None
        if self.enabled and tensorboard:
            self.tensorboard = ScalarEvents(run_dir / "events" / stage, first_step=first_step)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if self.lines is None:
            return
        record = {"stage": self.stage, "split": split, "step": int(step)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self.lines.append(jsonl.line(record))
        if self.tensorboard is not None:
            scalars = {f"{split}/{name}": float(value) for name, value in metrics.items() if np.ndim(value) == 0}
            self.tensorboard.scalars(step, scalars)

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_json_atomic(path: fs.PathLike, data: dict) -> None:
    """Write strict JSON (non-finite numbers as null) so readers never see a half-written file (a local temporary
    file and a rename; one object write in cloud storage)."""
    fs.write_text_atomic(path, strict_json.dumps(data, indent=2, sort_keys=True) + "\n")

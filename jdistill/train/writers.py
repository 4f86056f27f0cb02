"""Metrics out: `metrics.jsonl` (one JSON object a line) and TensorBoard event files, from process 0 only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np


def _plain(value: Any) -> float | list:
    return float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()


def truncate_jsonl(path: Path, stage: str, after_step: int) -> None:
    """Drop `stage`'s records past `after_step` (written by an interrupted run that is being resumed)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not (json.loads(line).get("stage") == stage and json.loads(line)["step"] > after_step)
    ]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class MetricsWriter:
    """Appends `{"stage", "split", "step", **metrics}` lines to `run_dir/metrics.jsonl` and scalars to
    TensorBoard under `run_dir/events/<stage>/` (one TensorBoard run per stage, so curves overlay)."""

    def __init__(self, run_dir: Path, stage: str, *, tensorboard: bool = True):
        self.stage = stage
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(run_dir) / "events" / stage))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "split": split, "step": int(step)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in metrics.items():
                if np.ndim(value) == 0:
                    self.tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temporary file and rename, so readers never see a half-written file."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

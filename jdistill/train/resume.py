"""Resume a stage: the newest checkpoint of `stage_dir/checkpoints`, or the finished stage's `result.json`."""

from __future__ import annotations

import json
from pathlib import Path

from jdistill.io import fs
from jdistill.train.checkpoint import Checkpointer


def resume_point(checkpointer: Checkpointer, state, stage_dir: Path, total_steps: int, *, resume: bool):
    """(start step, state, finished result dict or None): step 0 and `state` when not resuming or nothing is
    saved; the restored state otherwise (into `state`'s shapes and shardings); with the stage's `result.json`
    when its last step is saved, i.e. the stage is done."""
    latest = checkpointer.latest_step() if resume else None
    if latest is None:
        return 0, state, None
    state = checkpointer.restore(latest, state)
    result_path = fs.path(stage_dir) / "result.json"
    if result_path.exists() and latest == total_steps:
        return latest, state, json.loads(result_path.read_text())
    return latest, state, None

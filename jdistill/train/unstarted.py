"""A run directory that a failed job created but never trained in: removed, so the same `--run-dir` works next time.

A job checks what it can before it creates its run directory (`jdistill.train.job.check_job`); an error found
later (inside a stage, before its first checkpoint) would otherwise leave a folder holding only `config.yaml`,
which the next attempt refuses as "not empty". Anything a resume could use (a checkpoint, a finished stage's
`result.json`, a pruned student, a teacher cache) keeps the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# What a job writes before its first checkpoint: nothing in these is worth resuming.
DISPOSABLE_FILES = ("config.yaml", "config.yaml.tmp", "metrics.jsonl")
DISPOSABLE_FOLDERS = ("events",)  # TensorBoard logs of steps never checkpointed


def _disposable(run_dir: Path, path: Path) -> bool:
    relative = path.relative_to(run_dir)
    return str(relative) in DISPOSABLE_FILES or relative.parts[0] in DISPOSABLE_FOLDERS or path.is_dir()


def remove_unstarted(run_dir: Path) -> bool:
    """Remove `run_dir` (a folder this process created) if it holds nothing but disposable files; whether it did."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not all(_disposable(run_dir, path) for path in run_dir.rglob("*")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True

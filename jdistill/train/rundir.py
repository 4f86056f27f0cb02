"""Run directories: created fresh or resumed, never silently overwritten; local folders or `gs://` URLs
(`jdistill.io.fs`: never a local folder named `gs:`)."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import yaml

from jdistill.errors import ConfigError, RunDirError
from jdistill.io import fs


def default_run_dir(base: Path = Path("runs")) -> Path:
    """A new folder under `runs/` named by the current time."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}-{suffix}"
    return path


def check_run_dir(run_dir: fs.PathLike, *, resume: bool) -> None:
    """Fail with one line unless `run_dir` can be started (empty or absent) or resumed (has config.yaml)."""
    run_dir = fs.path(run_dir)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir}: run directory already exists and is not empty; pass --resume to continue "
            "it or choose another --run-dir"
        )


def prepare_run_dir(run_dir: fs.PathLike, *, resume: bool) -> fs.AnyPath:
    """Create (or, with `resume`, reopen) a run directory; fail with one line if that is not possible. The run
    directory as a path object (`jdistill.io.fs.path`)."""
    run_dir = fs.path(run_dir)
    check_run_dir(run_dir, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{run_dir}: run directory is not writable ({exc.strerror or exc})") from None
    return run_dir


def write_config(run_dir: fs.PathLike, config_dict: dict) -> None:
    fs.write_text_atomic(fs.path(run_dir) / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))


def local_config(run_dir: fs.PathLike) -> Path:
    """A local path of `run_dir/config.yaml` to load: the file itself, or for a gs:// run a copy in a temporary
    folder (a path that does not exist when the run has no config.yaml)."""
    saved = fs.path(run_dir) / "config.yaml"
    if not fs.is_remote(saved):
        return saved
    local = Path(tempfile.mkdtemp(prefix="jdistill-config-")) / "config.yaml"
    if saved.is_file():
        local.write_bytes(saved.read_bytes())
    return local


def check_remote_run_dir(config, recipe, run_dir: fs.PathLike) -> None:
    """One-line ConfigError, before any compute, for the parts of a job that need local folders when `run_dir`
    is a gs:// URL: the pruned teacher's Hugging Face folder (`student.prune`) and a teacher cache (`cached_topk`
    reads it with local-file ArrayRecord readers). (`run.export` is a local folder by its schema.)"""
    if not fs.is_remote(run_dir):
        return
    if config.student.prune.layers is not None:
        raise ConfigError(
            f"student.prune: needs a local run directory, not {run_dir} (the pruned teacher is a "
            "Hugging Face folder in it); prune with `jdistill prune` and set student.init_from"
        )
    if recipe.policy.cache and (not recipe.cache_dir or fs.is_remote(recipe.cache_dir)):
        raise ConfigError(
            f"distill.options.cache_dir: a teacher cache must be a local folder with a gs:// run "
            f"directory ({run_dir}); write one with `jdistill cache-teacher --out DIR` and set it"
        )

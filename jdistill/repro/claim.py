"""A reproducible claim: what a paper says, how one seed measures it, and when it counts as holding.

A `Claim` names a question and never changes it: `measure` trains the jobs one seed needs (presets through
`jdistill.train.job.run_job`, the same stages as `jdistill train`) and returns flat numbers; `held` decides from the
numbers' means over seeds; `rule` says in words what `held` tests. The runner (`jdistill.repro.runner`) repeats
`measure` over seeds and writes the table, `summary.json` and the PNG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jdistill.configs import Config, load_config

QUIET = ("run.progress=false", "run.tensorboard=false", "run.plot=false")


@dataclasses.dataclass(frozen=True)
class Plot:
    """The claim's PNG: one bar per entry of `bars` = (number, x tick label, legend group), its height the mean over
    seeds and its error bar the spread; bars of one group share a colour and a legend entry. `panels`: more
    panels of the same kind side by side (numbers on another scale)."""

    ylabel: str  # with units, e.g. "test accuracy (fraction)"
    xlabel: str
    bars: tuple[tuple[str, str, str], ...]
    # further panels beside the first, each (ylabel, xlabel, bars): numbers on another scale (e.g. tokens/s)
    panels: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class Context:
    """What one seed's measurement needs: the seed, its folder, the user's config overrides, the claim's
    parameters, and whether this is a `--quick` run."""

    seed: int
    run_dir: Path
    overrides: tuple[str, ...]
    params: Mapping[str, float]
    quick: tuple[str, ...] = ()

    def config(self, preset: str, *extra: str) -> Config:
        """The preset with `extra` (the claim's own settings), the quick sizes, the user's overrides (last: they
        win), and this seed."""
        return load_config(preset, [*QUIET, *extra, *self.quick, *self.overrides, f"seed={self.seed}"])

    def job(self, config: Config, name: str, dataset_fns: dict | None = None) -> dict:
        """Run one `jdistill train` job in `run_dir/name`; its summary."""
        from jdistill.train.job import run_job

        return run_job(config, self.run_dir / name, progress=False, dataset_fns=dataset_fns)


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    paper: str
    setting: str
    rule: str  # what `held` tests, in words
    measure: Callable[[Context], dict[str, float]]
    held: Callable[[Mapping[str, float]], bool]  # from the means over seeds
    plot: Plot
    quick: tuple[str, ...]  # config overrides of `--quick` (seconds, for tests)
    presets: tuple[str, ...]  # the presets `measure` loads (user overrides are checked against each first)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # claim parameters and defaults
    command: str = ""  # extra text of the README command (e.g. parameters), if any

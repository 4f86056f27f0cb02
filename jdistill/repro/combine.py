"""One claim's summary from several runs over disjoint seeds (`jdistill repro NAME --combine A,B,... --out DIR`).

A claim's seeds may run apart (one seed per machine, or a run cut short and the rest run later). The combined
summary holds each run's per-seed numbers in the order given, the verdict recomputed from the means over all of
them (the claim's own rule), `summary.json` and the PNG as `run_claim` writes them, and `combined_from`: the
summaries read. The runs must be of the same claim with the same settings (overrides, parameters, `--quick`) and
report the same numbers; their seeds must not repeat. Anything else is one line (exit 2), before anything is
written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from jdistill.errors import ConfigError, RunDirError
from jdistill.repro.claim import Claim


def read_summary(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such summary (a repro --out folder or its summary.json)") from None
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path}: not a repro summary ({error.msg} at line {error.lineno})") from None
    if not isinstance(summary, dict) or not {"claim", "numbers", "seeds", "settings"} <= set(summary):
        raise RunDirError(f"{path}: not a repro summary (expected claim, numbers, seeds, settings)")
    return summary


def per_seed_numbers(summary: dict) -> list[dict[str, float]]:
    """The summary's numbers as one {name: value} per seed (a null read back as NaN)."""
    return [
        {
            name: float("nan") if entry["per_seed"][i] is None else float(entry["per_seed"][i])
            for name, entry in summary["numbers"].items()
        }
        for i in range(len(summary["seeds"]))
    ]


def combine_runs(claim: Claim, paths: Sequence[Path], out_dir: Path) -> dict:
    """Read the summaries at `paths` (folders or summary.json files), check they fit together, and write the
    combined summary and PNG to `out_dir`; return it."""
    from jdistill.repro.runner import finish

    if len(paths) < 2:
        raise ConfigError(f"--combine {','.join(map(str, paths))}: expected two or more runs, comma-separated")
    summaries = [read_summary(Path(p)) for p in paths]
    first = summaries[0]
    seeds: list[int] = []
    per_seed: list[dict] = []
    for path, summary in zip(paths, summaries, strict=True):
        if summary["claim"] != claim.name:
            raise ConfigError(f"{path}: a run of {summary['claim']}, not {claim.name}")
        if summary["settings"] != first["settings"]:
            raise ConfigError(f"{path}: settings {summary['settings']} differ from {paths[0]}'s {first['settings']}")
        if set(summary["numbers"]) != set(first["numbers"]):
            raise ConfigError(f"{path}: numbers {sorted(summary['numbers'])} differ from {paths[0]}'s")
        repeated = sorted(set(seeds) & set(summary["seeds"]))
        if repeated:
            raise ConfigError(f"{path}: seed {repeated[0]} is already in an earlier run")
        seeds += list(summary["seeds"])
        per_seed += per_seed_numbers(summary)
    wall = sum(float(s.get("wall_seconds") or 0.0) for s in summaries)
    return finish(claim, out_dir, per_seed, seeds, first["settings"], wall, combined_from=[str(p) for p in paths])

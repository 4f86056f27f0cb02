"""Run a claim over seeds: every seed's jobs, the numbers' mean and spread, the verdict, `summary.json` and the PNG.

`summary.json` (strict JSON, written to a temporary name and renamed) holds `claim` (its name), `statement`,
`paper`, `setting`, `rule`, `held` (the verdict on the means over seeds), `held_per_seed`, `numbers`
(`{name: {mean, std, per_seed}}`), `settings` (quick, config overrides, claim parameters, the quick sizes) and
`seeds`.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from jdistill.errors import ConfigError, RunDirError
from jdistill.repro.claim import Claim, Context
from jdistill.repro.stats import aggregate, means
from jdistill.train.writers import write_json_atomic


def split_arguments(claim: Claim, arguments: Sequence[str]) -> tuple[list[str], dict]:
    """(config overrides `key.sub=value`, claim parameters `name=value`): a key without a dot is a parameter of
    the claim (e.g. `noise=0.3`), typed as its default; an unknown one is a one-line ConfigError."""
    from jdistill.configs.parsing import parse_override

    overrides, params = [], dict(claim.params)
    for text in arguments:
        path, value = parse_override(text)
        if len(path) > 1:
            overrides.append(text)
            continue
        name = path[0]
        if name == "seed":
            raise ConfigError(f"{text}: a claim runs every seed of --seeds (e.g. --seeds 0,1,2); drop {text}")
        if name not in claim.params:
            known = ", ".join(claim.params) or "none"
            close = difflib.get_close_matches(name, list(claim.params), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{text}: {claim.name} has no parameter {name!r}{hint}; its parameters: {known}")
        default = claim.params[name]
        if isinstance(default, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
            value = type(default)(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{text}: expected a {type(default).__name__} for {name}, got {value!r}")
        params[name] = value
    return overrides, params


def check_seed_dirs(out_dir: Path, seeds: Sequence[int]) -> None:
    taken = [out_dir / f"seed{seed}" for seed in seeds if (out_dir / f"seed{seed}").exists()]
    if taken:
        raise RunDirError(f"{taken[0]}: already exists; pass a new --out folder")


def run_claim(
    claim: Claim,
    out_dir: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    overrides: Sequence[str] = (),
    params: Mapping | None = None,
    log=None,
) -> dict:
    """Measure `claim` for each seed in `out_dir/seed<s>/`; write `out_dir/summary.json` and `out_dir/<name>.png`;
    return the summary. Config overrides are checked against the claim's presets before any compute."""
    from jdistill.configs import load_config
    from jdistill.repro.claim import QUIET

    out_dir = Path(out_dir)
    params = {**claim.params, **(params or {})}  # a parameter not given keeps its default
    quick_overrides = tuple(claim.quick) if quick else ()
    for preset in claim.presets:
        load_config(preset, [*QUIET, *quick_overrides, *overrides])  # a bad override: one line, nothing trained
    check_seed_dirs(out_dir, seeds)
    started = time.perf_counter()
    per_seed = []
    for seed in seeds:
        context = Context(seed, out_dir / f"seed{seed}", tuple(overrides), params, quick_overrides)
        measured = claim.measure(context)
        per_seed.append(measured)
        if log is not None:
            log(f"{claim.name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()))
    settings = {
        "quick": quick,
        "overrides": list(overrides),
        "params": params,
        "quick_overrides": list(quick_overrides),
    }
    return finish(claim, out_dir, per_seed, list(seeds), settings, time.perf_counter() - started)


def finish(claim: Claim, out_dir: Path, per_seed: list, seeds: list, settings: dict, wall: float, **extra) -> dict:
    """The summary of `per_seed` numbers (one dict per seed of `seeds`): verdict on the means and per seed,
    `out_dir/summary.json` (temp then rename) and the PNG; `extra` keys are added to the summary."""
    from jdistill.repro.plot import plot_claim

    numbers = aggregate(per_seed)
    held = bool(claim.held(means(numbers)))
    summary = {
        "claim": claim.name,
        "statement": claim.statement,
        "paper": claim.paper,
        "setting": claim.setting,
        "rule": claim.rule,
        "held": held,
        "held_per_seed": [bool(claim.held(n)) for n in per_seed],
        "numbers": numbers,
        "settings": settings,
        "seeds": seeds,
        "wall_seconds": wall,
        **extra,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "summary.json", summary)
    plot_claim(claim, numbers, held, seeds, out_dir / f"{claim.name}.png", quick=bool(settings.get("quick")))
    return summary

"""`jdistill repro`: reproduce a paper's claim at small scale, over seeds (docs/repro.md).

    jdistill repro --list
    jdistill repro NAME|all [--seeds 0,1,2] [--quick] [--out DIR] [key.sub=value ...] [param=value ...]
    jdistill repro NAME --combine RUN_A,RUN_B,... --out DIR

Each claim trains its presets' jobs (the stages of `jdistill train`) for every seed, prints a table of its numbers
(mean ± std over seeds, each seed's value) and whether the claim held, and writes `DIR/summary.json` and
`DIR/NAME.png` (default DIR: runs/repro-NAME/<time>; `all`: one folder per claim under DIR). `key.sub=value`
overrides the claim's configs as in `jdistill train`; `param=value` (no dot) sets a parameter of the claim (e.g.
`noise=0.3`). `--quick` shrinks the models and budgets to seconds (a smoke test; its verdict means nothing). Bad
input is one line, exit status 2, before any training. `--combine` trains nothing: it merges runs of one claim over
disjoint seeds (e.g. one seed per machine) into one summary and PNG (`jdistill.repro.combine`).

This module stays import-light (argparse only) so that `jdistill --help` does not load JAX.
"""

from __future__ import annotations

import argparse
import sys


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated distinct non-negative integers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {text!r}")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser("repro", help="reproduce a paper's claim at small scale over seeds (--list)")
    parser.add_argument("name", nargs="?", help="a claim (see --list) or all")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides / claim parameters")
    parser.add_argument("--list", action="store_true", help="list the claims")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="tiny models and budgets: seconds, for tests")
    parser.add_argument("--out", help="output folder (default: runs/repro-<name>/<time>)")
    parser.add_argument("--combine", help="comma-separated runs (folders or summary.json) of NAME over disjoint seeds")
    parser.set_defaults(func=cmd_repro)


def cmd_repro(args) -> int:
    from pathlib import Path

    from jdistill.errors import ConfigError
    from jdistill.repro import all_claims, get_claim, run_claim
    from jdistill.repro.runner import split_arguments
    from jdistill.train.rundir import default_run_dir

    if args.list:
        for claim in all_claims().values():
            print(f"{claim.name:<18} {claim.statement} ({claim.paper})")
        return 0
    if args.name is None:
        raise ConfigError("repro: name a claim (jdistill repro --list) or all")
    if args.combine is not None:
        return combine(args)
    chosen = list(all_claims().values()) if args.name == "all" else [get_claim(args.name)]
    plans = [(claim, *split_arguments(claim, args.overrides)) for claim in chosen]  # every error before training
    out = Path(args.out) if args.out else default_run_dir(Path("runs") / f"repro-{args.name}")
    for claim, overrides, params in plans:
        folder = out / claim.name if args.name == "all" else out
        log = lambda line: print(f"jdistill: {line}", file=sys.stderr, flush=True)
        summary = run_claim(
            claim, folder, seeds=args.seeds, quick=args.quick, overrides=overrides, params=params, log=log
        )
        report(claim, summary, folder)
    return 0


def report(claim, summary: dict, folder) -> None:
    from jdistill.repro.stats import table

    print(f"\n{claim.name}: {claim.statement}\n({claim.paper}; {claim.setting})")
    print(table(summary["numbers"], summary["seeds"]))
    verdict = "HELD" if summary["held"] else "NOT HELD"
    seeds_held = sum(summary["held_per_seed"])
    print(f"{verdict}: {claim.rule}; held in {seeds_held} of {len(summary['seeds'])} seeds")
    print(f"wrote {folder}/summary.json, {folder}/{claim.name}.png")


def combine(args) -> int:
    from pathlib import Path

    from jdistill.errors import ConfigError, RunDirError
    from jdistill.repro import get_claim
    from jdistill.repro.combine import combine_runs

    if args.name in (None, "all") or args.overrides or args.quick or not args.out:
        raise ConfigError("repro --combine: name one claim and --out DIR; no overrides or --quick (the runs have them)")
    if (Path(args.out) / "summary.json").exists():
        raise RunDirError(f"{args.out}/summary.json: already exists; pass a new --out folder")
    claim = get_claim(args.name)
    paths = [Path(part) for part in args.combine.split(",") if part.strip()]
    report(claim, combine_runs(claim, paths, Path(args.out)), args.out)
    return 0

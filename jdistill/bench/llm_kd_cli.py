"""The `jdistill bench llm-kd` parser (free of JAX and torch imports, so building the CLI stays fast)."""

from __future__ import annotations

import argparse


def register(bench_sub) -> None:
    """Add `llm-kd` to the `jdistill bench` subcommands."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "llm-kd", help="GKD train steps of jdistill vs TRL's GKDTrainer / DistillationTrainer (same tiny Qwen3)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--only", choices=["off", "on", "both"], default="both", help="off-policy, on-policy or both")

    def run(args) -> int:
        from jdistill.bench.llm_kd import run_llm_kd

        return run_llm_kd(args)

    parser.set_defaults(func=run)

"""The `jdistill bench early-exit` parser (free of JAX imports, so building the CLI stays fast)."""

from __future__ import annotations

import argparse

from jdistill.bench import int_list


def register(bench_sub) -> None:
    """Add `early-exit` to the `jdistill bench` subcommands."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "early-exit", help="self-speculative (early-exit draft) vs plain greedy decoding of one LM stage"
    )
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/STAGE of an LM (e.g. llm_layerskip's student)")
    parser.add_argument("--exits", type=int_list, default=None, help="draft exit layers (default: L/4 and L/2)")
    parser.add_argument("--draft-lens", type=int_list, default=[3, 5], help="draft lengths (maximum for thompson)")
    parser.add_argument(
        "--draft-loops",
        type=lambda text: [part for part in text.split(",") if part],
        default=["auto"],
        help="how draft steps compile: auto, scan, unrolled (comma-separated: each is timed; auto: scan on CPU)",
    )
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts, each decoded at batch size 1")
    parser.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=96, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over all prompts (median)")
    parser.add_argument(
        "--confidence-exits", type=int_list, default=None, help="per-token confidence exits (default: L/4, L/2, 3L/4)"
    )
    parser.add_argument(
        "--max-quality-drop", type=float, default=0.01, help="relative held-out accuracy loss allowed to the exits"
    )
    parser.add_argument(
        "--parts",
        type=lambda text: [part for part in text.split(",") if part],
        default=["speculative", "confidence", "methods"],
        help="what to measure: speculative, cap (every draft accepted), confidence, methods (default: all but cap)",
    )
    parser.add_argument(
        "--cap-widths",
        type=int_list,
        default=[],
        help="with --parts cap: the ceiling also on randomly initialised copies of the model at these d_model widths",
    )
    parser.add_argument(
        "--methods",
        type=lambda text: [part for part in text.split(",") if part],
        default=["jei", "middle_skip", "acm", "self_ablation"],
        help="learned dynamic-compute methods fitted and measured (jei, middle_skip, acm, self_ablation)",
    )
    parser.add_argument("--method-steps", type=int, default=200, help="Adam steps fitting each method")
    parser.add_argument("--method-lambda", type=float, default=0.5, help="cost weight of the learned routers")
    parser.add_argument("--json", help="write the figures to this JSON file (and the exit-quality curve beside it)")

    def run(args) -> int:
        from jdistill.bench.early_exit import run_early_exit

        return run_early_exit(args)

    parser.set_defaults(func=run)

"""Benchmarks (`jdistill bench ...`). This module stays free of JAX imports so building the CLI parser is fast."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers (sizes, counts, layer numbers)."""
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `jdistill bench attention`."""
    parser.add_argument(
        "--seq", type=int_list, help="sequence lengths, e.g. 1024,8192 (default: 1k..16k on GPU/TPU, 128..512 on CPU)"
    )
    parser.add_argument("--head-dim", type=int_list, default=[128], help="head dims (default 128)")
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--mode", choices=["fwd", "fwd+bwd", "both"], default="both")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    parser.add_argument("--impls", type=lambda s: s.split(","), help="comma-separated (default: all available)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", dest="json_path", help="also write one JSON line per row here")


def run_attention(args) -> int:
    from jdistill.bench.attention import run

    causal = {"yes": (True,), "no": (False,), "both": (False, True)}[args.causal]
    modes = ("fwd", "fwd+bwd") if args.mode == "both" else (args.mode,)
    run(
        seqs=args.seq,
        head_dims=tuple(args.head_dim),
        causal=causal,
        modes=modes,
        batch=args.batch,
        heads=args.heads,
        kv_heads=args.kv_heads or args.heads,
        impls=args.impls,
        repeats=args.repeats,
        json_path=args.json_path,
    )
    return 0

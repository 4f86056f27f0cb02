"""Arguments of `jdistill prune` and `jdistill export` (no heavy imports: `jdistill --help` stays fast)."""

from __future__ import annotations

import argparse

METHODS = ("every_other", "first", "block_influence")


def add_prune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of `jdistill prune`, completed."""
    parser.add_argument("--teacher", required=True, help="hf:DIR, a Llama / Qwen3 checkpoint folder")
    parser.add_argument("--layers", type=int, required=True, help="blocks the pruned model keeps (1 .. teacher's - 1)")
    parser.add_argument("--method", required=True, help=" | ".join(METHODS))
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--data", default="pystdlib_text", help="calibration data for block_influence")
    parser.add_argument("--data-dir", default=None, help="data directory (default: $JDISTILL_DATA_DIR)")
    parser.add_argument("--tokenizer", default=None, help="calibration tokenizer (default: the teacher's)")
    parser.add_argument("--calibration-batches", type=int, default=8, help="batches the block influence averages")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per calibration batch")
    return parser


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser of `jdistill export`, completed."""
    parser.add_argument("--run-dir", required=True, help="a run directory written by `jdistill train`")
    parser.add_argument("--stage", required=True, help="teacher, student_scratch, student_kd, ...")
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    return parser

"""`jdistill bench data [--json PATH]`: tokens/s of the LM training input pipeline against what a train step eats.

Pipeline: the training batches of `data.name` tokenised with `--tokenizer` (the data dir's cache, built first if
needed), read exactly as training reads them (`jdistill.data.lm_train_dataset`: grain random access to the
array_record shards, packing into `seq_len` windows with segment ids / positions / loss mask, batching), one batch
after another in this thread, pinned to one core. tokens/s = batch * seq_len * steps / wall seconds, over steps far
apart in the shuffled epoch (cold records, not a cache of the first few).

Train step: the `llm_kd`-like KD step (the setting of `jdistill bench llm-kd`: teacher 4 layers d256, student 2
layers d256, vocab 8192, batch 8 x 256 tokens, fp32) on a real batch of that pipeline, on every core this process
may use, median step time after warm-up. `ratio` = pipeline tokens/s / step tokens/s; the goal is >= 20 (one core
of input keeps the step fed with headroom for bigger steps and slower disks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from jdistill.io import strict_json

GOAL = 20.0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `bench data` to the `jdistill bench` parser."""
    bench = bench_subparsers.add_parser("data", help="LM input pipeline tokens/s (one core) vs a KD step's need")
    bench.add_argument("--data", default="pystdlib_text", help="source (default: pystdlib_text)")
    bench.add_argument("--tokenizer", default="bytes", help="tokenizer spec (default: bytes)")
    bench.add_argument("--data-dir", help="data directory (default: JDISTILL_DATA_DIR or the user cache)")
    bench.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    bench.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    bench.add_argument("--vocab", type=int, default=8192, help="model vocabulary of the train step (default 8192)")
    bench.add_argument("--batches", type=int, default=200, help="pipeline batches timed (default 200)")
    bench.add_argument("--steps", type=int, default=10, help="train steps timed (default 10)")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.set_defaults(func=run_bench_data)


def pipeline_tokens_per_second(dataset, batch: int, seq: int, batches: int) -> tuple[float, dict]:
    """(tokens/s, the first batch) reading `batches` batches spread over the dataset's first epochs, on one core."""
    first = dataset[0]
    stride = 7919  # a prime: consecutive timed steps land far apart in the shuffle
    pinned = _pin_to_one_core()
    try:
        start = time.perf_counter()
        for index in range(1, batches + 1):
            dataset[index * stride]
        seconds = time.perf_counter() - start
    finally:
        _restore_affinity(pinned)
    return batches * batch * seq / seconds, first


def _pin_to_one_core():
    if not hasattr(os, "sched_setaffinity"):
        return None
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    return previous


def _restore_affinity(previous) -> None:
    if previous is not None:
        os.sched_setaffinity(0, previous)


def step_tokens_per_second(batch_arrays: dict, vocab: int, steps: int) -> tuple[float, float]:
    """(tokens/s, median seconds) of the llm_kd-like KD train step on `batch_arrays`."""
    from flax import nnx

    from jdistill.bench.train_step import TEMPERATURE, JaxStep, bench_configs, bench_train_config
    from jdistill.models import Transformer
    from jdistill.recipes import KnowledgeDistillation

    batch, seq = batch_arrays["inputs"].shape
    teacher_config, student_config = bench_configs(seq, vocab_size=vocab)
    teacher = Transformer(teacher_config, rngs=nnx.Rngs(0))
    recipe = KnowledgeDistillation(objective="forward_kl", temperature=TEMPERATURE)
    step = JaxStep(student_config, recipe, bench_train_config(batch), batch_arrays, teacher=teacher)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return batch * seq / median, median


def run(data: str, tokenizer: str, data_dir, batch: int, seq: int, vocab: int, batches: int, steps: int) -> dict:
    """The figures of the module docstring, as a dict."""
    from jdistill.bench.train_step import available_cores
    from jdistill.configs.schema import DataConfig
    from jdistill.data import lm_train_dataset, lm_windows

    windows = lm_windows(DataConfig(name=data, dir=data_dir, tokenizer=tokenizer, seq_len=seq), "train")
    dataset = lm_train_dataset(windows, seed=0, batch_size=batch)
    pipeline, first = pipeline_tokens_per_second(dataset, batch, seq, batches)
    step, seconds = step_tokens_per_second(first, vocab, steps)
    return {
        "data": data,
        "tokenizer": tokenizer,
        "batch": batch,
        "seq": seq,
        "vocab": vocab,
        "windows": len(windows),
        "pipeline_tokens_per_s": pipeline,
        "step_tokens_per_s": step,
        "step_ms": 1000 * seconds,
        "step_cores": available_cores(),
        "ratio": pipeline / step,
        "goal": GOAL,
    }


def run_bench_data(args) -> int:
    result = run(args.data, args.tokenizer, args.data_dir, args.batch, args.seq, args.vocab, args.batches, args.steps)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(strict_json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_result(r: dict) -> str:
    return (
        f"input pipeline ({r['data']}, {r['tokenizer']}, batch {r['batch']} x {r['seq']}, 1 core): "
        f"{r['pipeline_tokens_per_s']:,.0f} tokens/s\n"
        f"llm_kd-like KD step ({r['step_cores']} cores): {r['step_ms']:.1f} ms = {r['step_tokens_per_s']:,.0f} "
        f"tokens/s\nratio {r['ratio']:.1f}x (goal >= {GOAL:.0f}x: {'met' if r['ratio'] >= GOAL else 'NOT met'})"
    )

"""`jdistill prune`: a depth-pruned copy of an HF teacher, written as an HF checkpoint that `student.init_from` reads.

jdistill prune --teacher hf:DIR --layers N --method every_other|first|block_influence --out DIR
               [--data NAME --tokenizer SPEC --calibration-batches K --seq-len S --batch-size B]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jdistill.configs.schema import DataConfig
from jdistill.errors import ConfigError
from jdistill.hf.checkpoint import from_pretrained, save_pretrained
from jdistill.hf.files import atomic_directory, check_output_dir, copy_tokenizer_files, hf_dir
from jdistill.hf.prune import block_influence, format_scores, layers_to_keep, prune_layers
from jdistill.hf.tokenizer_facts import tokenizer_facts

# Keys of the teacher's config.json carried over to the pruned one (the rest is written from the pruned model).
CARRIED_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def calibration_batches(
    data: str, tokenizer: str, data_dir: str | None, *, seq_len: int, batch_size: int, count: int
) -> tuple[dict, ...]:
    """The first `count` batches of the training split through the LM evaluation pipeline (padding masked)."""
    for flag, value in (("--calibration-batches", count), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"{flag}: expected a positive integer, got {value}")
    from jdistill.train import inputs

    config = DataConfig(
        name=data,
        dir=data_dir,
        tokenizer=tokenizer,
        seq_len=seq_len,
        eval_batch_size=batch_size,
        eval_max_batches=count,
    )
    return inputs.eval_batches(config, "lm", split="train")


def say(message: str) -> None:
    """A phase of `jdistill prune` on stderr, once its input is checked (writing a billion-parameter model takes
    minutes)."""
    print(f"jdistill prune: {message}", file=sys.stderr, flush=True)


def cmd_prune(args: argparse.Namespace) -> int:
    teacher_dir = hf_dir(args.teacher, "--teacher")
    out = check_output_dir(Path(args.out))
    teacher_config = json.loads((teacher_dir / "config.json").read_text())
    num_layers = teacher_config.get("num_hidden_layers", 0)
    layers_to_keep(args.method, num_layers, args.layers, scores=np.zeros(num_layers))  # flag errors before loading
    model = from_pretrained(teacher_dir)
    scores = None
    if args.method == "block_influence":
        tokenizer = args.tokenizer or ("hf:" + str(teacher_dir) if (teacher_dir / "tokenizer.json").is_file() else "")
        if not tokenizer:
            raise ConfigError(f"--tokenizer: {teacher_dir} has no tokenizer.json; name the calibration tokenizer")
        vocab = tokenizer_facts(tokenizer).vocab_size
        if vocab > model.config.vocab_size:
            raise ConfigError(
                f"--tokenizer {tokenizer}: its vocabulary ({vocab}) exceeds the teacher's embedding "
                f"({model.config.vocab_size} rows)"
            )
        batches = calibration_batches(
            args.data,
            tokenizer,
            args.data_dir,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            count=args.calibration_batches,
        )
        scores = block_influence(model, batches, progress=True)
    keep = layers_to_keep(args.method, num_layers, args.layers, scores)
    if scores is not None:
        print(format_scores(scores, keep))
    pruned = prune_layers(model, keep)
    carried = {key: teacher_config[key] for key in CARRIED_KEYS if key in teacher_config}
    say(f"writing {out}")
    with atomic_directory(out) as tmp:
        save_pretrained(pruned, tmp, extra_config=carried)
        copied = copy_tokenizer_files(teacher_dir, tmp)
    print(
        f"kept blocks {keep} of {num_layers} ({args.method}); wrote {out} (config.json, model.safetensors"
        + "".join(f", {name}" for name in copied)
        + ")"
    )
    return 0

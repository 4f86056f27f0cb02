"""`jdistill generate`: continue text prompts with a trained stage of a run or a Hugging Face checkpoint.

    jdistill generate --checkpoint RUN_DIR/STAGE|hf:DIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--tokenizer SPEC] [--jsonl]

The prompts are encoded with the run's tokenizer (`data.tokenizer`), or the checkpoint's own `tokenizer.json`
for `hf:DIR` (`--tokenizer` overrides either), after its BOS when it has one, and continued in one batch by
`jdistill.models.generate.generate` (greedy at temperature 0, the default). Each completion, cut at the first
EOS, is printed (with `--jsonl`: one JSON object a line, as in a stage's `samples.jsonl`); the generated tokens
per second (compilation left out) go to stderr. Bad input (a missing run, stage or checkpoint, an unknown
tokenizer, a prompt longer than the model's `max_seq_len`) is one line and exit status 2, before any compute.

This module stays import-light (argparse only) so that `jdistill --help` does not load JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from jdistill.io import strict_json

HF_PREFIX = "hf:"
COMPILE_EVENTS = "/jax/core/compile/"


def register(subparsers) -> None:
    """Add the `generate` subcommand to the `jdistill` parser."""
    parser = subparsers.add_parser(
        "generate", help="continue text prompts with a run's stage (RUN_DIR/STAGE) or an hf:DIR checkpoint"
    )
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/STAGE (e.g. runs/x/student_kd) or hf:DIR")
    parser.add_argument("--prompt", action="append", required=True, help="a text prompt (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=_positive, default=64, help="tokens generated per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-k", type=_positive, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--tokenizer", help="bytes | hf:DIR | DIR (default: the run's, or the checkpoint's own)")
    parser.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt")
    parser.add_argument(
        "--draft-exit",
        type=_positive,
        default=None,
        help="early-exit self-speculative decoding: draft with the first N blocks (LayerSkip; docs/early_exit.md)",
    )
    parser.add_argument("--draft-len", type=_positive, default=4, help="tokens drafted per round (with --draft-exit)")
    parser.add_argument(
        "--draft-control",
        choices=("fixed", "thompson"),
        default="fixed",
        help="fixed: --draft-len every round; thompson: up to --draft-len, chosen per round by Thompson sampling",
    )
    parser.set_defaults(func=cmd_generate)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def load_model(checkpoint: str):
    """(decoder LM, default tokenizer spec, stage name) of `RUN_DIR/STAGE` or `hf:DIR`."""
    from flax import nnx

    from jdistill.errors import RunDirError

    if checkpoint.startswith(HF_PREFIX):
        from jdistill.hf import from_pretrained

        return from_pretrained(checkpoint[len(HF_PREFIX) :]), checkpoint, checkpoint
    stage_dir = Path(checkpoint)
    run_dir, stage = stage_dir.parent, stage_dir.name
    if not stage_dir.is_dir():
        raise RunDirError(f"--checkpoint {checkpoint}: no such directory (expected RUN_DIR/STAGE or hf:DIR)")
    from jdistill.configs import load_config
    from jdistill.train.restore import load_pretrained, load_stage

    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"--checkpoint {checkpoint}: {run_dir} is not a run directory (no config.yaml)")
    config = load_config(str(run_dir / "config.yaml"))
    tokenizer = config.data.tokenizer
    if stage == "teacher" and config.teacher.init_from:  # the run read its teacher; it trained no checkpoint
        result = load_pretrained(config.teacher)
        return nnx.merge(result.graphdef, result.params), tokenizer, stage
    model, config = load_stage(run_dir, stage)
    if stage.startswith("student_") and stage != "student_scratch":  # the recipe's deployed weights (quantised)
        from jdistill.recipes.registry import build_recipe

        graphdef, params = nnx.split(model)
        model = nnx.merge(graphdef, build_recipe(config.distill).forward_params(params))
    return model, tokenizer, stage


def cmd_generate(args) -> int:
    import jax

    from jdistill.errors import ConfigError, UserError
    from jdistill.eval.samples import complete, encode_prompts, records_from_rows
    from jdistill.models import Transformer
    from jdistill.models.speculative import check_options
    from jdistill.text import load_tokenizer

    if args.temperature < 0:
        raise ConfigError(f"--temperature: expected >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: expected a probability mass in (0, 1], got {args.top_p}")
    if args.draft_exit is not None and (args.top_k is not None or args.top_p is not None):
        raise ConfigError(
            "--draft-exit: self-speculative decoding samples at a temperature only (drop --top-k/--top-p)"
        )
    model, tokenizer_spec, stage = load_model(args.checkpoint)
    if not isinstance(model, Transformer) or model.config.kind != "lm":
        raise ConfigError(f"--checkpoint {args.checkpoint}: not a decoder language model (nothing to generate)")
    tokenizer = load_tokenizer(args.tokenizer or tokenizer_spec)
    prompts = encode_prompts(tokenizer, args.prompt, max_len=model.config.max_seq_len, field="--prompt")
    vocab = model.config.vocab_size
    for index, ids in enumerate(prompts):
        if ids.max() >= vocab:
            raise ConfigError(f"--prompt[{index}]: token id {int(ids.max())} is outside the model's vocabulary {vocab}")
    speculative = None
    if args.draft_exit is not None:
        try:
            check_options(
                model.config,
                exit_layer=args.draft_exit,
                draft_len=args.draft_len,
                temperature=args.temperature,
                draft_head="auto",
            )
        except UserError as error:
            raise ConfigError(f"--draft-exit/--draft-len: {error}") from None
        speculative = {
            "exit_layer": args.draft_exit,
            "draft_len": args.draft_len,
            "draft_control": args.draft_control,
        }
    sampling = {} if speculative else {"top_k": args.top_k, "top_p": args.top_p}
    with compile_timer() as compiling:
        started = time.perf_counter()
        rows = complete(
            model,
            prompts,
            max_new_tokens=args.max_new_tokens,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            rng=jax.random.key(args.seed),
            temperature=args.temperature,
            speculative=speculative,
            **sampling,
        )
        seconds = time.perf_counter() - started
    records = records_from_rows(tokenizer, prompts, rows, stage=stage, texts=args.prompt)
    for index, record in enumerate(records):
        if args.jsonl:
            print(strict_json.dumps(record, ensure_ascii=False))
        else:
            print(("" if index == 0 else "\n") + record["completion"])
    count, decoding = sum(len(row) for row in rows), max(seconds - compiling[0], 1e-9)
    print(
        f"jdistill generate: {count} tokens in {seconds:.2f} s ({compiling[0]:.2f} s compiling), "
        f"{count / decoding:.1f} tokens/s"
        + (
            ""
            if speculative is None
            else f"; drafts from block {args.draft_exit}: {speculative['stats'].acceptance_rate:.1%} accepted, "
            f"{speculative['stats'].tokens_per_round:.2f} tokens per round, "
            f"{speculative['stats'].mean_draft_len:.2f} drafted"
        ),
        file=sys.stderr,
    )
    return 0


@contextlib.contextmanager
def compile_timer():
    """A one-element list that sums the seconds JAX spends tracing, lowering and compiling inside the block (its
    `/jax/core/compile/...` duration events), so a rate can leave the first call's compilation out."""
    import jax

    total = [0.0]

    def listen(event: str, duration_secs: float, **_: str | int) -> None:
        if event.startswith(COMPILE_EVENTS):
            total[0] += duration_secs

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)

"""`jdistill tokenizer train --data NAME --vocab-size N --out DIR [--split train] [--data-dir DIR]`.

Trains a byte-level BPE tokenizer (`jdistill.text.train_tokenizer`) on a dataset split's texts, writes it to DIR
(under a temporary name, renamed at the end) and prints its vocabulary size, fingerprint and compression (UTF-8
bytes per token) on the held-out split.
"""

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from jdistill.errors import ConfigError, DataError

TEXT_KEYS = ("text", "bytes")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tokenizer` command (and its `train` subcommand) to the `jdistill` parser."""
    tokenizer = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a dataset's text")
    tokenizer_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train = tokenizer_sub.add_parser("train", help="train byte-level BPE on a split; write a Hugging Face directory")
    train.add_argument("--data", required=True, help="dataset name, e.g. pystdlib_text (see docs/text.md)")
    train.add_argument("--vocab-size", type=int, required=True, help="ids in the vocabulary, specials included")
    train.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    train.add_argument("--split", default="train", help="split to train on (default: train)")
    train.add_argument("--eval-split", default="test", help="held-out split the compression is measured on")
    train.add_argument("--text-key", help="example field holding the text (default: text, else bytes)")
    train.add_argument("--data-dir", help="data directory (default: JDISTILL_DATA_DIR or the user cache)")
    train.add_argument("--max-documents", type=int, help="train on at most this many documents, evenly spread")
    train.set_defaults(func=cmd_tokenizer_train)


def example_text(example: dict, key: str | None, where: str) -> str:
    """The example's text: field `key`, else `text`, else `bytes`, decoded as UTF-8 (invalid bytes -> U+FFFD)."""
    keys = (key,) if key else TEXT_KEYS
    for name in keys:
        if name in example:
            value = example[name]
            if isinstance(value, str):
                return value
            if isinstance(value, np.ndarray):
                value = value.tobytes()
            if isinstance(value, bytes):
                return value.decode("utf-8", errors="replace")
            raise DataError(f"{where}: field {name!r} is a {type(value).__name__}, expected text or bytes")
    raise DataError(f"{where}: no text field {' or '.join(map(repr, keys))} (fields: {', '.join(sorted(example))})")


def split_texts(
    data: str, split: str, data_dir: str | None, key: str | None, max_documents: int | None = None
) -> Sequence[str]:
    """The texts of a dataset split, one per example (at most `max_documents`, evenly spaced)."""
    from jdistill.data import load_source

    source = load_source(data, split, data_dir)
    indices = range(len(source))
    if max_documents is not None and max_documents < len(source):
        indices = np.linspace(0, len(source) - 1, max_documents).round().astype(int).tolist()
    return [example_text(source[index], key, f"{data}/{split} example {index}") for index in indices]


def bytes_per_token(tokenizer, texts: Sequence[str]) -> float:
    """UTF-8 bytes per token over `texts` (the tokenizer's compression), special-token strings counted as text."""
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(list(texts), split_special_tokens=True))
    return sum(len(text.encode("utf-8")) for text in texts) / max(tokens, 1)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from jdistill.data.sources import load_source
    from jdistill.text.train import check_training_arguments, train_tokenizer

    out = check_training_arguments(args.vocab_size, args.out)
    if args.max_documents is not None and args.max_documents < 1:
        raise ConfigError(f"--max-documents must be at least 1, got {args.max_documents}")
    texts = split_texts(args.data, args.split, args.data_dir, args.text_key, args.max_documents)
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    print(
        f"jdistill: training byte-level BPE (vocab {args.vocab_size}) on {len(texts)} documents "
        f"({megabytes:.1f} MB) of {args.data}/{args.split} ...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, args.vocab_size, out)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    print(f"vocab size   {tokenizer.vocab_size}")
    print(f"fingerprint  {tokenizer.fingerprint}")
    try:
        load_source(args.data, args.eval_split, args.data_dir)
    except DataError:
        print(f"compression  not measured ({args.data} has no split {args.eval_split!r})")
        return 0
    held_out = split_texts(args.data, args.eval_split, args.data_dir, args.text_key)
    print(f"compression  {bytes_per_token(tokenizer, held_out):.3f} bytes/token on {args.data}/{args.eval_split}")
    return 0

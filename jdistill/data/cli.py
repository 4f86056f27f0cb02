"""`jdistill tokenize --data SRC --tokenizer SPEC --out DIR [--splits train,test] [--shard-size N]`.

Tokenises a text source (`jdistill.data.documents`: pystdlib_text, pystdlib_functions, tfds:NAME, files:GLOB) into
array_record shards with metadata (`jdistill.data.tokenized`), written under a temporary name and renamed at the
end, and prints per split the documents, tokens and UTF-8 bytes per token. Train on it with
`data.name=tokenized:DIR data.tokenizer=SPEC`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jdistill.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tokenize` command to the `jdistill` parser."""
    tokenize = subparsers.add_parser("tokenize", help="tokenise a text source into array_record shards (docs/data.md)")
    tokenize.add_argument("--data", required=True, help="pystdlib_text, pystdlib_functions, tfds:NAME or files:GLOB")
    tokenize.add_argument("--tokenizer", default="bytes", help='"bytes", "hf:DIR" or DIR (default: bytes)')
    tokenize.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    tokenize.add_argument("--splits", default="train,test", help="comma-separated splits (default: train,test)")
    tokenize.add_argument("--shard-size", type=int, default=4096, help="documents per shard (default: 4096)")
    tokenize.add_argument("--text-key", default="text", help="text field of tfds: / files: records (default: text)")
    tokenize.add_argument("--data-dir", help="data directory (default: JDISTILL_DATA_DIR or the user cache)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")
    tokenize.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args) -> int:
    from jdistill.data.tokenized import tokenize_source

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out}: already exists and is not an empty folder; remove it or choose another")
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    if not splits:
        raise DataError(f"--splits {args.splits!r}: expected comma-separated split names, e.g. train,test")
    metadata = tokenize_source(
        args.data,
        args.tokenizer,
        out,
        splits=splits,
        shard_size=args.shard_size,
        data_dir=args.data_dir,
        text_key=args.text_key,
        progress=not args.no_progress,
    )
    tokenizer = metadata["tokenizer"]
    print(f"{args.data} ({metadata['kind']}) with {tokenizer['spec']} (vocab {tokenizer['vocab_size']}) -> {out}")
    for split, counts in metadata["splits"].items():
        per_token = counts["bytes"] / max(counts["tokens"], 1)
        print(
            f"  {split}: {counts['documents']} documents, {counts['tokens']} tokens, {counts['shards']} shards, "
            f"{per_token:.2f} bytes/token"
        )
    print(f"train on it with: data.name=tokenized:{out} data.tokenizer={tokenizer['spec']}")
    return 0

"""`data.tokenizer: "bpe:VOCAB"`: a byte-level BPE tokenizer trained on the data source itself, on first use.

    spec = resolve_tokenizer("bpe:4096", "pystdlib_text", data_dir=None)
    # -> "<data dir>/tokenizers/pystdlib_text-bpe4096-<hash>"
    config = with_corpus_tokenizer(config)    # data.tokenizer resolved the same way

The tokenizer is `jdistill.text.train_tokenizer` (byte-level BPE of at most VOCAB ids, specials included) on the texts
of the source's `train` split (a prompt/completion document contributes prompt + completion, a chat the contents of
its turns). It is cached in `<data dir>/tokenizers/<source>-bpe<VOCAB>-<hash>/`, the hash over (source, VOCAB,
text_key, TRAINING_VERSION); built under an exclusive file lock (a racing process waits, then finds it) and written
under a temporary name then renamed, so a reader never sees half a tokenizer. Any other spec is returned as it is.
A job resolves the spec once at its start, so every consumer (data cache, evaluation, samples, export) sees a
plain DIR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jdistill.errors import ConfigError

BPE_PREFIX = "bpe:"
TRAINING_VERSION = 1  # bump when what the cache holds for a key changes (training texts or trainer settings)


def bpe_vocab_size(spec: str) -> int | None:
    """VOCAB of a "bpe:VOCAB" spec, None for any other spec; a one-line `ConfigError` for a malformed one."""
    if not spec.startswith(BPE_PREFIX):
        return None
    from jdistill.text.train import MIN_VOCAB_SIZE

    raw = spec[len(BPE_PREFIX) :]
    if not raw.isdigit() or int(raw) < MIN_VOCAB_SIZE:
        raise ConfigError(f"data.tokenizer {spec!r}: expected bpe:VOCAB with VOCAB an integer >= {MIN_VOCAB_SIZE}")
    return int(raw)


def training_texts(source: str, data_dir=None, text_key: str = "text") -> Iterator[str]:
    """The texts a corpus tokenizer is trained on: every document of `source`'s train split, as text."""
    from jdistill.data.documents import documents

    for document in documents(source, "train", data_dir, text_key=text_key):
        if "text" in document:
            yield document["text"]
        elif "prompt" in document:
            yield document["prompt"] + document["completion"]
        else:
            yield "\n".join(turn["content"] for turn in document["messages"])


def corpus_tokenizer_dir(source: str, vocab_size: int, data_dir=None, text_key: str = "text") -> Path:
    """The cache folder of the BPE tokenizer of `vocab_size` trained on `source` (trained here on first use)."""
    from jdistill.data.sources import exclusive_lock, resolve_data_dir

    if source.startswith("tokenized:"):
        raise ConfigError(
            f"data.tokenizer bpe:{vocab_size} with data.name {source}: a tokenised folder already has its tokenizer; "
            "set data.tokenizer to it"
        )
    key = json.dumps(
        {"source": source, "vocab_size": vocab_size, "text_key": text_key, "version": TRAINING_VERSION},
        sort_keys=True,
    )
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source)[:48]
    root = resolve_data_dir(data_dir) / "tokenizers"
    directory = root / f"{slug}-bpe{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (directory / "tokenizer.json").is_file():
        return directory  # reading needs no lock
    with exclusive_lock(root, directory.name):
        if not (directory / "tokenizer.json").is_file():  # another process may have trained it while we waited
            from jdistill.text import train_tokenizer

            print(f"jdistill: training bpe:{vocab_size} on {source} (first use) -> {directory}", file=sys.stderr)
            if directory.exists():  # an empty leftover: train_tokenizer renames into an empty folder only
                os.rmdir(directory)
            train_tokenizer(training_texts(source, data_dir, text_key), vocab_size, directory)
    return directory


def resolve_tokenizer(spec: str, source: str, data_dir=None, text_key: str = "text") -> str:
    """`spec` with "bpe:VOCAB" replaced by its cache folder (trained on `source` on first use); others unchanged."""
    vocab_size = bpe_vocab_size(spec)
    if vocab_size is None:
        return spec
    return str(corpus_tokenizer_dir(source, vocab_size, data_dir, text_key))


def with_corpus_tokenizer(config: Any) -> Any:
    """A run config (anything with a `data` DataConfig) whose `data.tokenizer` is resolved (`resolve_tokenizer`)."""
    data = config.data
    spec = resolve_tokenizer(data.tokenizer, data.name, data.dir, data.text_key)
    if spec == data.tokenizer:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(data, tokenizer=spec))

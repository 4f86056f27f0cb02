"""Language-model data: the tokenised folder a config reads, packed windows, and the train / eval batch streams.

Every LM source goes through one path: raw text (`pystdlib_text`, `pystdlib_functions`, `tfds:NAME`, `files:GLOB`)
is tokenised once with `data.tokenizer` (`jdistill.data.tokenized`) into `<data dir>/tokenized/<name>-<hash>/`
(built under a lock, atomically; the hash covers the source, the tokenizer's fingerprint and the text key), and
`tokenized:DIR` names a folder written by `jdistill tokenize`. Windows are packed by `jdistill.data.packing`.

Batch format (docs/conventions.md, CONTRACT section 3), for train and eval:

    {"inputs", "targets": int32 [batch, seq_len], "mask": bool [batch, seq_len],
     "segment_ids", "positions": int32 [batch, seq_len]}

Training reads whole windows only, in a seeded shuffle (a pure function of (seed, step)); eval reads every window of
the split in order, the last one partial, plus all-False padding rows, so each target is scored exactly once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grain
import numpy as np

from jdistill.data.packing import PackedWindows
from jdistill.data.pipeline import host_shard, padded_batch, shuffle_seed
from jdistill.data.tokenized import TokenizedSplit, read_metadata, tokenize_source
from jdistill.errors import DataError

if TYPE_CHECKING:
    from jdistill.configs.schema import DataConfig
    from jdistill.text import Tokenizer

TOKENIZED_PREFIX = "tokenized:"


@functools.lru_cache(maxsize=8)
def _tokenizer(spec: str) -> Tokenizer:
    """The tokenizer of `spec` (memoized: a job resolves its data folder several times)."""
    from jdistill.text import load_tokenizer

    return load_tokenizer(spec)


def tokenized_dir(
    name: str,
    tokenizer: str,
    data_dir: str | os.PathLike | None = None,
    *,
    text_key: str = "text",
    progress: bool = False,
) -> Path:
    """The tokenised folder for source `name` read with `tokenizer` (building the cache on first use).

    `tokenized:DIR` is checked against `tokenizer` (same fingerprint) and returned as is.
    """
    from jdistill.data.sources import exclusive_lock, resolve_data_dir

    tok = _tokenizer(tokenizer)
    if name.startswith(TOKENIZED_PREFIX):
        directory = Path(name[len(TOKENIZED_PREFIX) :]).expanduser()
        written = read_metadata(directory)["tokenizer"]
        if written["fingerprint"] != tok.fingerprint:
            raise DataError(
                f"{directory} was tokenised with {written['spec']!r} (fingerprint {written['fingerprint'][:12]}) but "
                f"data.tokenizer is {tokenizer!r} (fingerprint {tok.fingerprint[:12]}); set data.tokenizer to the "
                "tokenizer it was written with"
            )
        return directory
    key = json.dumps({"source": name, "tokenizer": tok.fingerprint, "text_key": text_key}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48]
    root = resolve_data_dir(data_dir) / "tokenized"
    directory = root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (directory / "metadata.json").exists():
        with exclusive_lock(root, directory.name):
            if not (directory / "metadata.json").exists():  # another process may have built it meanwhile
                tokenize_source(name, tokenizer, directory, data_dir=data_dir, text_key=text_key, progress=progress)
    return directory


def config_dir(data_config: DataConfig) -> Path:
    return tokenized_dir(data_config.name, data_config.tokenizer, data_config.dir, text_key=data_config.text_key)


@functools.lru_cache(maxsize=16)
def open_split(directory: Path, split: str) -> TokenizedSplit:
    """A split of a tokenised folder (memoized: the per-document index is read once)."""
    return TokenizedSplit(directory, split)


def lm_windows(data_config: DataConfig, split: str, *, include_partial_tail: bool = False) -> PackedWindows:
    """The packed windows of the config's LM data split."""
    return PackedWindows(
        open_split(config_dir(data_config), split), data_config.seq_len, include_partial_tail=include_partial_tail
    )


def lm_train_dataset(
    windows: PackedWindows,
    *,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Endless shuffled LM batches; element `step` is the batch for that global step.

    Whole windows only; host `process_index` reads windows `process_index::process_count`; each epoch of this host's
    windows is a fresh permutation (seeded by `seed`); batches are cut from the endless stream of epochs.
    """
    return (
        host_shard(grain.MapDataset.source(windows), process_index, process_count)
        .shuffle(seed=shuffle_seed(seed))
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )


def lm_eval_batches(
    windows: PackedWindows, *, batch_size: int, max_batches: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The split's windows in stream order (at most `max_batches` batches), padded and masked."""
    starts = range(0, len(windows), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts:
        stop = min(start + batch_size, len(windows))
        yield padded_batch([windows[index] for index in range(start, stop)], batch_size)

"""An offline teacher cache: the teacher's top-k log-probabilities for every token of LM training windows.

The cache is keyed by **window**: record r holds window `window_ids[r]` of the split's packed stream, i.e. the
tokens `stream[w * seq_len : w * seq_len + seq_len + 1]` that `jdistill.data.packing.PackedWindows` serves as
window w. The LM training batches are a deterministic function of (seed, step) (a grain shuffle of the window
indices), so the same pipeline run over the window *indices* (`window_index_dataset`) says which window each batch
row is, and `attach_teacher_cache` adds that window's cached teacher to the row, checking the tokens match exactly.

A cache folder:

    metadata.json                          written last (atomically): its presence marks a complete cache
    window_ids.npy                         int64 [num_records], increasing: the cached windows
    <split>.array_record-0000i-of-0000n    one record per cached window (array_record, `group_size:1`)

A record is the concatenated bytes of `tokens` [seq_len + 1] (the window's stream slice) and `ids` [seq_len, k]
(both uint8 / uint16 / int32, the smallest that holds the vocabulary; read back as int32) and `logprobs` [seq_len, k]
(float16 or float32; the teacher's log_softmax(logits / T) at its k most likely tokens, in decreasing order).
Position i of the window predicts target i (the token after input i). `metadata.json` records the vocabulary size,
tokenizer ("bytes"), k, seq_len, split, dataset, temperature, dtypes, the teacher's model config, and the size on
disk as bytes per cached token.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jdistill.data.pipeline import host_shard, shuffle_seed
from jdistill.errors import DataError
from jdistill.io import strict_json

METADATA = "metadata.json"
WINDOW_IDS = "window_ids.npy"
FORMAT = "jdistill.teacher_cache/1"
LOGPROB_DTYPES = ("float16", "float32")


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer dtype that stores ids in [0, vocab_size)."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def record_layout(seq_len: int, top_k: int, vocab_size: int, logprob_dtype: str) -> list[tuple[str, np.dtype, tuple]]:
    """(name, dtype, shape) of a record's fields, in storage order."""
    return [
        ("tokens", id_dtype(vocab_size), (seq_len + 1,)),
        ("ids", id_dtype(vocab_size), (seq_len, top_k)),
        ("logprobs", np.dtype(logprob_dtype), (seq_len, top_k)),
    ]


def _decode(raw: bytes, layout) -> dict[str, np.ndarray]:
    fields, offset = {}, 0
    for name, dtype, shape in layout:
        count = int(np.prod(shape))
        fields[name] = np.frombuffer(raw, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    fields["ids"] = fields["ids"].astype(np.int32)
    fields["tokens"] = fields["tokens"].astype(np.int32)
    return fields


def write_teacher_cache(
    out_dir,
    records: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    window_ids,
    *,
    seq_len: int,
    top_k: int,
    vocab_size: int,
    split: str,
    logprob_dtype: str = "float16",
    records_per_shard: int = 8192,
    extra_metadata: dict | None = None,
) -> dict:
    """Write `records` ((tokens [seq_len + 1], ids [seq_len, k], logprobs [seq_len, k]) for each window of
    `window_ids`, in that order) to `out_dir`; returns the metadata. The folder is built beside `out_dir` and
    renamed into place, so a crash never leaves a cache that looks complete."""
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}")
    window_ids = np.asarray(window_ids, np.int64)
    if window_ids.ndim != 1 or np.any(np.diff(window_ids) <= 0):
        raise ValueError("window_ids must be a strictly increasing 1-D array")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    layout = record_layout(seq_len, top_k, vocab_size, logprob_dtype)
    num_shards = max(1, -(-len(window_ids) // records_per_shard))
    files = [f"{split}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    writer: ArrayRecordWriter | None = None
    written = 0
    try:
        for fields in records:
            if writer is None or written % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = ArrayRecordWriter(str(tmp / files[written // records_per_shard]), "group_size:1")
            arrays = [
                np.ascontiguousarray(np.asarray(value).astype(dtype).reshape(shape))
                for value, (_, dtype, shape) in zip(fields, layout, strict=True)
            ]
            writer.write(b"".join(a.tobytes() for a in arrays))
            written += 1
    finally:
        if writer is not None:
            writer.close()
    if written != len(window_ids):
        raise ValueError(f"{written} records written for {len(window_ids)} window ids")
    np.save(tmp / WINDOW_IDS, window_ids)
    disk = sum((tmp / name).stat().st_size for name in files if (tmp / name).exists())
    tokens = max(len(window_ids) * seq_len, 1)
    metadata = dict(
        extra_metadata or {},
        format=FORMAT,
        tokenizer="bytes",
        vocab_size=vocab_size,
        top_k=top_k,
        seq_len=seq_len,
        split=split,
        num_windows=len(window_ids),
        num_tokens=len(window_ids) * seq_len,
        logprob_dtype=logprob_dtype,
        id_dtype=id_dtype(vocab_size).name,
        files=files,
        bytes_per_token=disk / tokens,
        payload_bytes_per_token=sum(np.dtype(d).itemsize * int(np.prod(s)) for _, d, s in layout) / seq_len,
    )
    (tmp / METADATA).write_text(strict_json.dumps(metadata, indent=1, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return metadata


def read_metadata(cache_dir) -> dict | None:
    """The metadata of a complete cache in `cache_dir`, else None."""
    path = Path(cache_dir) / METADATA
    return json.loads(path.read_text()) if path.is_file() else None


class TeacherCache:
    """Random access to a cache by window index: `cache.rows(window_indices)` -> stacked fields."""

    def __init__(self, cache_dir):
        self.dir = Path(cache_dir)
        meta = read_metadata(self.dir)
        if meta is None or meta.get("format") != FORMAT:
            raise DataError(
                f"{self.dir}: not a complete teacher cache (no {METADATA}); write one with `jdistill cache-teacher`"
            )
        self.metadata: dict = meta
        self.layout = record_layout(meta["seq_len"], meta["top_k"], meta["vocab_size"], meta["logprob_dtype"])
        self.window_ids = np.load(self.dir / WINDOW_IDS)
        self.source = grain.sources.ArrayRecordDataSource([str(self.dir / name) for name in meta["files"]])

    def __len__(self) -> int:
        return len(self.window_ids)

    def record_of(self, windows) -> np.ndarray:
        """Record positions of `windows`; a window that is not cached is a `DataError`."""
        windows = np.asarray(windows, np.int64)
        position = np.minimum(np.searchsorted(self.window_ids, windows), len(self.window_ids) - 1)
        missing = self.window_ids[position] != windows
        if np.any(missing):
            raise DataError(
                f"{self.dir}: window {int(windows[missing][0])} is not in the teacher cache "
                "(it was written for other windows, seq_len or steps)"
            )
        return position

    def rows(self, windows) -> dict[str, np.ndarray]:
        """{"tokens", "ids", "logprobs"} stacked over `windows`."""
        records = [_decode(raw, self.layout) for raw in self.source.__getitems__(self.record_of(windows).tolist())]
        return {key: np.stack([record[key] for record in records]) for key in records[0]}


def window_index_dataset(
    num_windows: int, *, seed: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """Element `step` is the window indices `[batch_size]` of the LM training batch for that step: the same grain
    pipeline as `lm_train_dataset`, run over indices (the shuffle depends only on the length and the seed)."""
    return (
        host_shard(grain.MapDataset.range(num_windows), process_index, process_count)
        .shuffle(seed=shuffle_seed(seed))
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )


def visited_windows(num_windows: int, steps: int, *, seed: int, batch_size: int, process_count: int = 1):
    """The sorted distinct windows that `steps` training steps read, over every host."""
    per_host = batch_size // process_count
    visited = [
        window_index_dataset(num_windows, seed=seed, batch_size=per_host, process_index=p, process_count=process_count)[
            step
        ]
        for p in range(process_count)
        for step in range(steps)
    ]
    return np.unique(np.concatenate(visited)) if visited else np.zeros(0, np.int64)


def attach_teacher_cache(
    dataset: grain.MapDataset,
    cache: TeacherCache,
    *,
    num_windows: int,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    top_k: int | None = None,
):
    """`dataset` (LM training batches) with `teacher_topk_ids` int32 and `teacher_topk_logprobs` float32
    `[batch, seq_len, k]` from the cache, row by row; a row whose tokens differ from its cached window is a
    `DataError`. `top_k` keeps the k most likely of the cached entries (k <= the cache's)."""
    indices = window_index_dataset(
        num_windows, seed=seed, batch_size=batch_size, process_index=process_index, process_count=process_count
    )
    k = cache.metadata["top_k"] if top_k is None else top_k
    if not 1 <= k <= cache.metadata["top_k"]:
        raise DataError(f"{cache.dir}: top_k={k} but the cache holds only the top {cache.metadata['top_k']}")

    def add(step, batch):
        rows = cache.rows(indices[step])
        if not np.array_equal(rows["tokens"][:, :-1], batch["inputs"]) or not np.array_equal(
            rows["tokens"][:, 1:], batch["targets"]
        ):
            raise DataError(
                f"{cache.dir}: cached windows do not match the training batch of step {step} "
                "(another dataset, split or seq_len?)"
            )
        return dict(
            batch,
            teacher_topk_ids=rows["ids"][..., :k],
            teacher_topk_logprobs=rows["logprobs"][..., :k].astype(np.float32),
        )

    return dataset.map_with_index(add)

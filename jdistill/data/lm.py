"""Byte-level language-model data: documents packed into one token stream, cut into windows.

Packing: every document's raw bytes followed by `SEPARATOR` (byte 0, an end-of-document token),
all concatenated in source order into one uint8 stream; vocabulary size 256. Byte 0 never occurs in
Python source, which `packed_stream` checks. The packed stream is built once per (dataset dir,
split) and kept in memory, read-only.

Windows: window `k` is `stream[k * seq_len : k * seq_len + seq_len + 1]`; `inputs` are its first
`seq_len` tokens and `targets` the last `seq_len` (inputs shifted by one). Windows may span
documents (the separator marks the boundary). Batch format, for train and eval:

    {"inputs": int32 [batch, seq_len], "targets": int32 [batch, seq_len],
     "mask": bool [batch, seq_len]}

In training `mask` is all True (only whole windows are used). In eval it is False on padding: the
positions past the stream's end in the final partial window and the padding rows of the last
batch, so eval scores every target token of the split exactly once.
"""

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from jdistill.data.pipeline import host_shard, padded_batch, shuffle_seed

VOCAB_SIZE = 256
SEPARATOR = 0

# Memo of packed streams keyed by (dataset dir, split): derived, read-only data, never results.
_PACKED_STREAMS: dict[tuple[str, str], np.ndarray] = {}


def packed_stream(source: Sequence[dict], *, text_key: str = "bytes") -> np.ndarray:
    """uint8 [num_tokens]: each document's bytes then SEPARATOR, in source order (memoized)."""
    info = getattr(source, "dataset_info", None)  # tfds sources know their dataset and split; plain lists do not
    split = getattr(source, "split", None)
    memo_key = (str(info.data_dir), str(split)) if info is not None else None
    if memo_key in _PACKED_STREAMS:
        return _PACKED_STREAMS[memo_key]
    pieces = []
    for index in range(len(source)):
        document = np.asarray(source[index][text_key], dtype=np.uint8)
        if np.any(document == SEPARATOR):
            raise ValueError(f"document {index} contains the separator byte {SEPARATOR}")
        pieces.extend([document, np.array([SEPARATOR], dtype=np.uint8)])
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint8)
    stream.flags.writeable = False
    if memo_key is not None:
        _PACKED_STREAMS[memo_key] = stream
    return stream


class LMWindows(Sequence[dict[str, np.ndarray]]):
    """Random-access windows of a packed stream: `windows[k]` -> {"inputs", "targets", "mask"}.

    Each value has shape [seq_len].

    With `include_partial_tail`, a last window shorter than `seq_len + 1` tokens is kept and padded
    with zeros, its `mask` False where there is no target.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, *, include_partial_tail: bool = False):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.stream = stream
        self.seq_len = seq_len
        num_targets = max(len(stream) - 1, 0)
        whole_windows, tail_targets = divmod(num_targets, seq_len)
        self.num_windows = whole_windows + int(include_partial_tail and tail_targets > 0)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]  # windows: no slicing
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} out of range [0, {self.num_windows})")
        start = index * self.seq_len
        tokens = self.stream[start : start + self.seq_len + 1].astype(np.int32)
        num_targets = len(tokens) - 1
        if num_targets < self.seq_len:  # Only the partial tail window needs padding.
            tokens = np.pad(tokens, (0, self.seq_len - num_targets))
        return {
            "inputs": tokens[:-1],
            "targets": tokens[1:],
            "mask": np.arange(self.seq_len) < num_targets,
        }


def lm_train_dataset(
    source: Sequence[dict],
    *,
    seq_len: int,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Endless shuffled LM batches; element `step` is the batch for that global step.

    Whole windows only; host `process_index` reads windows `process_index::process_count`; each
    epoch of this host's windows is a fresh permutation (seeded by `seed`); batches are cut from the
    endless stream of epochs.
    """
    windows = LMWindows(packed_stream(source), seq_len)
    return (
        host_shard(grain.MapDataset.source(windows), process_index, process_count)
        .shuffle(seed=shuffle_seed(seed))
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )


def lm_eval_batches(
    source: Sequence[dict],
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The split's windows in stream order (at most `max_batches` batches), padded and masked."""
    windows = LMWindows(packed_stream(source), seq_len, include_partial_tail=True)
    starts = range(0, len(windows), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts:
        stop = min(start + batch_size, len(windows))
        yield padded_batch([windows[index] for index in range(start, stop)], batch_size)

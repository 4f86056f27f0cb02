"""Packing tokenised documents into LM windows (concat-and-split) with segment ids, positions and the loss mask.

The split is read as one virtual stream: each document's ids followed by `eos_id`, in split order. Nothing is
concatenated in memory: `starts[d]` (int64, one per document) is where document d begins in the stream, and a window
reads just the documents it overlaps. Window k is the stream slice `[k * seq_len, k * seq_len + seq_len + 1)`:

    inputs      = slice[:-1]          targets = slice[1:]
    segment_ids = 1, 2, ... numbering the documents of the row (by each input token's document); 0 on padding
    positions   = the input token's offset inside its document (so a window that starts mid-document continues
                  the document's positions; RoPE only sees differences within a segment)
    mask        = target is in the same document as its input (the closing EOS included, the next document's
                  first token excluded) AND the target token is inside the loss (text: every token; prompt /
                  completion: the completion; chat: assistant tokens; a document's EOS counts as loss iff its last
                  token does)

Concat-and-split keeps every token (no padding in training) and makes window k a pure function of k, which the
teacher cache relies on; the cost is that a document cut at a window boundary loses the context before the cut.
Training uses the whole windows; evaluation also the partial last one (padded, masked), so every target of the
split is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jdistill.data.tokenized import TokenizedSplit

LM_FIELDS = ("inputs", "targets", "mask", "segment_ids", "positions")


class PackedWindows(Sequence[dict[str, np.ndarray]]):
    """Random-access packed windows of a tokenised split: `windows[k]` -> the fields above, each `[seq_len]`."""

    def __init__(self, split: TokenizedSplit, seq_len: int, *, include_partial_tail: bool = False):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.split = split
        self.seq_len = seq_len
        self.starts = np.concatenate([[0], np.cumsum(split.lengths + 1)]).astype(np.int64)
        num_targets = max(int(self.starts[-1]) - 1, 0)
        whole, tail = divmod(num_targets, seq_len)
        self.num_windows = whole + int(include_partial_tail and tail > 0)

    def __len__(self) -> int:
        return self.num_windows

    def stream_slice(self, begin: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, document index, offset in document, loss flag) of stream positions [begin, end) (clipped).

        Reads only the documents the range overlaps, and converts only the overlapping part of each."""
        end = min(end, int(self.starts[-1]))
        first = int(np.searchsorted(self.starts, begin, side="right")) - 1
        last = int(np.searchsorted(self.starts, end, side="left"))  # documents [first, last) overlap
        pieces, documents, positions, losses = [], [], [], []
        for number, (ids, spans, _) in enumerate(self.split.documents(range(first, last)), start=first):
            lo = max(begin - int(self.starts[number]), 0)  # the overlap, as offsets into the document + EOS
            hi = min(end - int(self.starts[number]), len(ids) + 1)
            piece = np.empty(hi - lo, np.int32)
            piece[: max(min(hi, len(ids)) - lo, 0)] = ids[lo:hi]
            if hi == len(ids) + 1:
                piece[-1] = self.split.eos_id
            offsets = np.arange(lo, hi, dtype=np.int32)
            pieces.append(piece)
            documents.append(np.full(hi - lo, number, np.int64))
            positions.append(offsets)
            losses.append(loss_flags(offsets, spans, len(ids), self.split.kind == "text"))
        return tuple(np.concatenate(parts) for parts in (pieces, documents, positions, losses))  # type: ignore[return-value]

    def tokens(self, index: int) -> np.ndarray:
        """int32 [<= seq_len + 1]: window `index`'s stream slice."""
        return self.stream_slice(index * self.seq_len, index * self.seq_len + self.seq_len + 1)[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]  # windows: no slicing
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} out of range [0, {self.num_windows})")
        begin = index * self.seq_len
        tokens, document, position, loss = self.stream_slice(begin, begin + self.seq_len + 1)
        return pack_row(tokens, document, position, loss, self.seq_len, self.split.pad_id)


def loss_flags(offsets: np.ndarray, spans: np.ndarray, num_ids: int, all_loss: bool) -> np.ndarray:
    """Whether each document offset (0..num_ids, num_ids being the EOS) is in the loss: everything for text, else
    inside a span; the EOS counts iff the document's last token does."""
    if all_loss:
        return np.ones(len(offsets), bool)
    probe = np.where(offsets == num_ids, num_ids - 1, offsets)  # the EOS takes the last token's flag
    inside = np.zeros(len(offsets), bool)
    for start, stop in spans:
        inside |= (probe >= start) & (probe < stop)
    return inside & (probe >= 0)


def pack_row(tokens, document, position, loss, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One packed row from a stream slice of up to `seq_len + 1` tokens (see the module docstring)."""
    n = min(len(tokens), seq_len + 1) - 1  # real inputs; the rest of the row is padding
    row = {
        "inputs": np.full(seq_len, pad_id, np.int32),
        "targets": np.full(seq_len, pad_id, np.int32),
        "mask": np.zeros(seq_len, bool),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
    }
    row["inputs"][:n] = tokens[:n]
    row["targets"][:n] = tokens[1 : n + 1]
    row["mask"][:n] = (document[:n] == document[1 : n + 1]) & loss[1 : n + 1]
    row["segment_ids"][:n] = np.cumsum(np.concatenate([[1], document[1:n] != document[: n - 1]])) if n else 0
    row["positions"][:n] = position[:n]
    return row

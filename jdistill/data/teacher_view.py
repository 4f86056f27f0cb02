"""The teacher's own tokens for each packed student window, aligned by text position (distillation across
tokenizers: `distill.objective: uld` with a teacher checkpoint whose tokenizer is not the data's).

A teacher that reads another tokenizer cannot be fed the student's token ids. Both tokenizations of the same
documents exist (the source tokenised once with each tokenizer, `jdistill.data.lm.tokenized_dir`), and the byte
length of every token is known (`Tokenizer.token_byte_lengths`), so each token has a byte offset in its document:

    b_s(d, o) = bytes of student tokens 0..o-1 of document d          b_t(d, q) likewise for the teacher

Student input position o of document d predicts the text that follows byte b_s(d, o + 1) (the prefix it has read,
its own token o included); teacher input q predicts what follows b_t(d, q + 1). The two predictions are **aligned**
when they follow the same prefix of the same document: b_s(d, o + 1) == b_t(d, q + 1). At aligned positions both
models distribute probability over "the next piece of text from here" in their own vocabularies, which is what ULD
(Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs")
compares through sorted probabilities. (The paper pairs the k-th answer token of each sequence by order; pairing by
text offset is exact where the tokenizations agree on a boundary and skips the positions where they do not, so the
pairs never drift apart within a long window.) Each document's end (the EOS prediction) is always aligned.

Teacher row of student window k: for each document piece of the window, the teacher tokens that start at or after
the piece's first byte and that end at or before the byte the piece's last prediction has read, in order, with
segment ids and in-document positions as the student's (`jdistill.data.packing`), padded or cut to
`teacher_seq_len`. `teacher_index[i]` is the teacher row position aligned with student position i and
`teacher_aligned[i]` whether there is one (false on padding, on positions without a common boundary, on a
document whose two tokenizations do not cover the same number of bytes, and past a cut teacher row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain
import numpy as np

from jdistill.data.packing import PackedWindows
from jdistill.data.tokenized import TokenizedSplit
from jdistill.errors import DataError

TEACHER_FIELDS = ("teacher_inputs", "teacher_segment_ids", "teacher_positions", "teacher_index", "teacher_aligned")


def byte_offsets(ids: np.ndarray, byte_lengths: np.ndarray) -> np.ndarray:
    """int64 [len(ids) + 1]: the byte offset where each token starts, and the document's total at the end."""
    return np.concatenate([[0], np.cumsum(byte_lengths[np.asarray(ids, np.int64)], dtype=np.int64)])


def default_teacher_seq_len(student: TokenizedSplit, teacher: TokenizedSplit, seq_len: int) -> int:
    """A teacher row long enough for a student window of `seq_len` tokens: seq_len times the split's teacher /
    student token ratio, plus 10%, rounded up to a multiple of 8 (at least 8)."""
    ratio = float(np.sum(teacher.lengths + 1)) / max(float(np.sum(student.lengths + 1)), 1.0)
    return max(8, 8 * math.ceil(seq_len * ratio * 1.1 / 8))


class TeacherView(Sequence[dict[str, np.ndarray]]):
    """`view[k]` -> the teacher fields (module docstring) of the student's packed window k."""

    def __init__(
        self,
        windows: PackedWindows,
        teacher: TokenizedSplit,
        *,
        student_byte_lengths: np.ndarray,
        teacher_byte_lengths: np.ndarray,
        teacher_seq_len: int,
    ):
        if len(teacher) != len(windows.split):
            raise DataError(
                f"{teacher.directory}: {len(teacher)} documents in split {teacher.split!r} but the student's "
                f"tokenisation {windows.split.directory} has {len(windows.split)}; tokenise the same source"
            )
        if teacher_seq_len < 1:
            raise ValueError(f"teacher_seq_len must be positive, got {teacher_seq_len}")
        self.windows, self.teacher = windows, teacher
        self.student_bytes = np.asarray(student_byte_lengths, np.int64)
        self.teacher_bytes = np.asarray(teacher_byte_lengths, np.int64)
        self.teacher_seq_len = teacher_seq_len

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]  # no slicing
        seq_len, width = self.windows.seq_len, self.teacher_seq_len
        begin = index * seq_len
        _, documents, offsets, _ = self.windows.stream_slice(begin, begin + seq_len + 1)
        n = min(len(documents), seq_len + 1) - 1  # the student row's real inputs
        row = {
            "teacher_inputs": np.full(width, self.teacher.pad_id, np.int32),
            "teacher_segment_ids": np.zeros(width, np.int32),
            "teacher_positions": np.zeros(width, np.int32),
            "teacher_index": np.zeros(seq_len, np.int32),
            "teacher_aligned": np.zeros(seq_len, bool),
        }
        filled = 0
        segment = 0
        pieces = (
            np.flatnonzero(np.concatenate([[True], documents[1:n] != documents[: n - 1]]))
            if n
            else np.zeros(0, np.int64)
        )
        bounds = [*pieces.tolist(), n]
        for piece, start in enumerate(bounds[:-1]):
            stop = bounds[piece + 1]
            document = int(documents[start])
            student_ids = self.windows.split.document(document)[0]
            teacher_ids = self.teacher.document(document)[0]
            s_bytes = byte_offsets(student_ids, self.student_bytes)
            t_bytes = byte_offsets(teacher_ids, self.teacher_bytes)
            first, last = int(offsets[start]), int(offsets[stop - 1])  # student input offsets of the piece
            if first >= len(student_ids):
                continue  # the piece is this document's EOS as the row's last input: it predicts nothing here
            last = min(last, len(student_ids) - 1)
            lo = int(np.searchsorted(t_bytes[:-1], s_bytes[first], side="left"))  # first teacher token inside
            hi = int(np.searchsorted(t_bytes[1:], s_bytes[last + 1], side="right"))  # tokens ending by then
            take = max(min(hi - lo, width - filled), 0)
            if take == 0:
                continue
            segment += 1
            row["teacher_inputs"][filled : filled + take] = teacher_ids[lo : lo + take]
            row["teacher_segment_ids"][filled : filled + take] = segment
            row["teacher_positions"][filled : filled + take] = np.arange(lo, lo + take)
            if s_bytes[-1] == t_bytes[-1]:  # both tokenizations cover the document's bytes
                read_s = s_bytes[offsets[start:stop].clip(max=len(student_ids) - 1) + 1]
                read_t = t_bytes[lo + 1 : lo + take + 1]  # the prefix each teacher input has read
                match = np.searchsorted(read_t, read_s, side="right") - 1  # the last teacher input at that prefix
                found = (match >= 0) & (read_t[match.clip(min=0)] == read_s)
                found &= offsets[start:stop] < len(student_ids)  # the EOS input predicts the next document
                row["teacher_index"][start:stop] = np.where(found, filled + match.clip(min=0), 0)
                row["teacher_aligned"][start:stop] = found
            filled += take
        return row


def attach_teacher_view(
    dataset: grain.MapDataset,
    view: TeacherView,
    *,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """`dataset` (LM training batches) with the teacher fields of each row's window, `[batch, teacher_seq_len]`
    (`teacher_inputs`, `teacher_segment_ids`, `teacher_positions`) and `[batch, seq_len]` (`teacher_index`,
    `teacher_aligned`); the rows are found by running the training shuffle over window indices."""
    from jdistill.data.teacher_cache import window_index_dataset

    indices = window_index_dataset(
        len(view), seed=seed, batch_size=batch_size, process_index=process_index, process_count=process_count
    )

    def add(step, batch):
        rows = [view[int(index)] for index in indices[step]]
        return dict(batch, **{key: np.stack([row[key] for row in rows]) for key in TEACHER_FIELDS})

    return dataset.map_with_index(add)

"""The real vocabulary of teacher and student logits (docs/checkpoints.md#vocabulary-policy).

Checkpoints often pad their embedding to a multiple of 64 or 128 rows (Qwen3: 151669 tokens, 151936 rows): the
rows past the tokenizer's vocabulary are never a target, and two models of one tokenizer may pad differently.
Distillation compares the distributions over the real tokens only: the logits are cut to their first V rows
before the softmax, so no probability sits on a padding row of either model, and the two vocabularies line up.

    student_logits [..., V_s_rows], teacher_logits [..., V_t_rows]  ->  [..., V_s], [..., V_t]

with (V_s, V_t) = `real_vocab` (equal unless the objective compares different vocabularies, e.g. `uld`), or
min(V_s_rows, V_t_rows) for both when unknown. Leading shapes must match exactly: nothing is broadcast.
"""

from __future__ import annotations

from jax import Array


def real_vocab_sizes(student_rows: int, teacher_rows: int, real_vocab: tuple[int, int] | None) -> tuple[int, int]:
    """(V_s, V_t): `real_vocab` checked against the rows there are, or min(rows) for both when it is None."""
    if real_vocab is None:
        shared = min(student_rows, teacher_rows)
        return shared, shared
    student_vocab, teacher_vocab = real_vocab
    if not (0 < student_vocab <= student_rows and 0 < teacher_vocab <= teacher_rows):
        raise ValueError(
            f"real vocabulary (student {student_vocab}, teacher {teacher_vocab}) exceeds the logits' rows "
            f"(student {student_rows}, teacher {teacher_rows})"
        )
    return student_vocab, teacher_vocab


def real_vocab_logits(student_logits: Array, teacher_logits: Array, real_vocab: tuple[int, int] | None = None):
    """(student_logits[..., :V_s], teacher_logits[..., :V_t]); a leading-shape mismatch is a ValueError."""
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student and teacher logits must share their leading shape; got {student_logits.shape} and "
            f"{teacher_logits.shape}"
        )
    student_vocab, teacher_vocab = real_vocab_sizes(student_logits.shape[-1], teacher_logits.shape[-1], real_vocab)
    return student_logits[..., :student_vocab], teacher_logits[..., :teacher_vocab]

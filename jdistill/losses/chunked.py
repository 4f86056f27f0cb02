"""Token-level logit objectives for large vocabularies, computed chunk by chunk from hidden states.

Given the final hidden states and output projections of both models, the loss is accumulated over chunks of
about `chunk_size` tokens inside `lax.scan`; each chunk's body is rematerialised (`jax.checkpoint`), so neither the
forward nor the backward pass ever holds the full `[batch, seq, vocab]` logits of teacher or student — only one
`[batch, chunk_size // batch, vocab]` block of each. The result equals the dense objective on `hidden @ head (+ bias)`.

A chunk is `chunk_size // batch` consecutive positions of EVERY sequence (the scan runs along the sequence), so
the batch axis stays whole inside each chunk: on a mesh that splits the batch, each device computes the logits of
its own rows only. (Chunks of the flattened `batch * seq` tokens would put the scanned axis on the batch shards,
and XLA would all-gather every token's hidden states to every device and compute each chunk on all of them.)

Shapes:
    student_hidden [batch, seq, d_student], student_head [d_student, vocab] (bias [vocab] optional)
    teacher_hidden [batch, seq, d_teacher], teacher_head [d_teacher, vocab] (bias [vocab] optional)
    labels [batch, seq] int (needed when label_weight != 0), mask [batch, seq] or None
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jdistill.losses.divergences import Divergence, divergence
from jdistill.losses.logits import cross_entropy
from jdistill.losses.reduction import check_reduction
from jdistill.losses.vocab import real_vocab_sizes


def _chunk_sum(entry: Divergence, temperature, beta, distill_scale, label_weight, student_vocab, heads, carry, chunk):
    """(sum, count) of `distill_scale * D + label_weight * CE` over one chunk of tokens; D sees the student's first
    `student_vocab` columns (None: all), the CE all of them."""
    s_head, s_bias, t_head, t_bias = heads
    s_hidden, t_hidden, labels, mask = chunk
    student = jnp.dot(s_hidden, s_head, preferred_element_type=jnp.float32) + s_bias
    teacher = jax.lax.stop_gradient(jnp.dot(t_hidden, t_head, preferred_element_type=jnp.float32) + t_bias)
    distilled = student if student_vocab is None else student[..., :student_vocab]
    total, count = entry(distilled, teacher, temperature=temperature, beta=beta, mask=mask, reduction="sum_count")
    total = distill_scale * total
    if label_weight:
        ce, _ = cross_entropy(student, labels, mask=mask, reduction="sum_count")
        total = total + label_weight * ce
    return (carry[0] + total, carry[1] + count), None


def chunked_distillation_loss(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    labels=None,
    *,
    objective: str = "forward_kl",
    temperature=1.0,
    beta=0.5,
    distill_weight=1.0,
    label_weight=0.0,
    scale_by_temperature_squared: bool | None = None,
    mask=None,
    student_bias=None,
    teacher_bias=None,
    chunk_size: int = 256,
    reduction: str = "mean",
    real_vocab: tuple[int, int] | None = None,
):
    """`distill_weight * c * D(p_t, p_s at T) + label_weight * CE(y, s)` over valid tokens, chunked.

    D is a divergence of the catalogue (`losses.DIVERGENCES`): `forward_kl` (KL(p_t || p_s)), `reverse_kl`
    (KL(p_s || p_t)), `generalized_jsd` (with `beta`, TRL's convention) or `tvd`; c = T^2 or 1, the divergence's
    default (T^2 for `forward_kl` only, Hinton; none for the GKD-style ones) unless `scale_by_temperature_squared`
    is given (docs/conventions.md, Temperatures).
    The teacher side is under `stop_gradient`. Equal to the dense objective on `hidden @ head + bias`
    (Hinton et al. 2015 for KD; Agarwal et al. 2024 for the GKD divergences). `reduction`: "mean" (sum over
    valid tokens / their count), "sum" or "sum_count".
    `real_vocab=(V_s, V_t)`: D compares the first V_s student and V_t teacher columns only (padded embedding rows
    excluded, `losses.real_vocab_logits`); the teacher's head is cut before its product, the CE keeps every student
    column (as the dense path does). None: both heads must have the same width.
    """
    entry = divergence(objective)
    check_reduction(reduction)
    if reduction == "none":
        raise ValueError("reduction='none' would materialise per-token values; use 'mean', 'sum' or 'sum_count'")
    student_vocab = None
    if real_vocab is not None:
        student_vocab, teacher_vocab = real_vocab_sizes(student_head.shape[-1], teacher_head.shape[-1], real_vocab)
        teacher_head = teacher_head[:, :teacher_vocab]
        teacher_bias = None if teacher_bias is None else teacher_bias[:teacher_vocab]
        if not label_weight:  # no CE: the student's padding columns are never needed
            student_head = student_head[:, :student_vocab]
            student_bias = None if student_bias is None else student_bias[:student_vocab]
        student_vocab = None if student_vocab == student_head.shape[-1] else student_vocab
    elif teacher_head.shape[-1] != student_head.shape[-1]:
        raise ValueError(
            f"student_head and teacher_head must share the vocab axis; got {student_head.shape[-1]} and "
            f"{teacher_head.shape[-1]}"
        )
    batch, seq = student_hidden.shape[:2]
    positions = min(seq, max(1, chunk_size // batch))  # per sequence and chunk
    num_chunks = -(-seq // positions)
    pad = num_chunks * positions - seq
    weights = jnp.ones((batch, seq), jnp.float32) if mask is None else mask.astype(jnp.float32)
    labels = jnp.zeros((batch, seq), jnp.int32) if labels is None else labels

    def chunks(x):  # [batch, seq, ...] -> [num_chunks, batch, positions, ...]; padding has weight 0
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(batch, num_chunks, positions, *x.shape[2:]), 0, 1)

    s_bias = jnp.zeros(student_head.shape[-1:], jnp.float32) if student_bias is None else student_bias
    t_bias = jnp.zeros(teacher_head.shape[-1:], jnp.float32) if teacher_bias is None else teacher_bias
    s_bias, t_bias = s_bias.astype(jnp.float32), t_bias.astype(jnp.float32)
    xs = (chunks(student_hidden), chunks(teacher_hidden), chunks(labels), chunks(weights))
    scale = distill_weight * entry.temperature_scale(temperature, scale_by_temperature_squared)
    chunk_sum = jax.checkpoint(
        functools.partial(_chunk_sum, entry, temperature, beta, scale, label_weight, student_vocab)
    )
    # The heads in the hidden states' dtype, as the models' own heads compute (nnx.Linear and Embed.attend cast
    # to the compute dtype); the dots accumulate in float32.
    heads = (student_head.astype(student_hidden.dtype), s_bias, teacher_head.astype(teacher_hidden.dtype), t_bias)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (total, count), _ = jax.lax.scan(lambda carry, chunk: chunk_sum(heads, carry, chunk), init, xs)
    if reduction == "sum_count":
        return total, count
    if reduction == "sum":
        return total
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)

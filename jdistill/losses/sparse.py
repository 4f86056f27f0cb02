"""Distillation from partial or mismatched teachers (docs/methods.md#top-k-cached-teacher,
docs/methods.md#universal-logit-distillation).

`topk_kd` distils from a cached teacher that kept only its top-k log-probabilities per position;
`uld_loss` compares distributions over different vocabularies. Shapes at the boundary: student
logits `[..., vocab]` (e.g. `[batch, seq, vocab]`), the mask `[...]`. Conventions as in `logits.py`:
float32 log-probabilities whatever the input dtype, `mask=None` means every position counts,
`reduction` is "mean", "sum", "sum_count" or "none" (see `reduce_tokens`), and no T^2 factor.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses._common import Reduced
from jdistill.losses.reduction import reduce_tokens

# The tail bucket's probability is kept >= this, so that the loss and its gradient stay finite when the
# top-k carry (numerically) all the mass, e.g. k = vocab, or a cache whose top-k sum rounds above 1.
TAIL_FLOOR = 1e-6


def _log1mexp(x: Array) -> Array:
    """log(1 - e^x) for x < 0, accurate at both ends (log(-expm1(x)) near 0, log1p(-e^x) below -log 2)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _with_tail_bucket(topk_log_probs: Array) -> Array:
    """`[..., k]` log-probabilities -> `[..., k + 1]`, the last entry log(1 - sum of the top-k probabilities).

    The top-k mass is clipped so the tail is at least TAIL_FLOOR, then the k + 1 categories are
    renormalised (a no-op up to rounding unless the tail was clipped), so they always sum to 1.
    """
    top_mass = jax.nn.logsumexp(topk_log_probs, axis=-1)
    tail = _log1mexp(jnp.minimum(top_mass, math.log1p(-TAIL_FLOOR)))
    with_tail = jnp.concatenate([topk_log_probs, tail[..., None]], axis=-1)
    return with_tail - jax.nn.logsumexp(with_tail, axis=-1, keepdims=True)


def _check_topk_shapes(student_shape, logprobs_shape, ids_shape) -> None:
    if logprobs_shape != ids_shape:
        raise ValueError(
            f"teacher_topk_logprobs and teacher_topk_ids must have the same shape; got {logprobs_shape} and {ids_shape}"
        )
    if logprobs_shape[:-1] != student_shape[:-1] or logprobs_shape[-1] > student_shape[-1]:
        raise ValueError(
            f"teacher top-k arrays must have shape {student_shape[:-1]} + (k,) with k <= {student_shape[-1]}; "
            f"got {logprobs_shape}"
        )


def topk_kd(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    *,
    beta=0.0,
    temperature=1.0,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Sparse KD from a cached teacher's top-k log-probabilities, with a tail bucket on both sides.

    Per position, with teacher ids i_1..i_k and q the teacher's cached probabilities:
      teacher: (q_{i_1}, ..., q_{i_k}, 1 - sum_j q_{i_j})
      student: (p_s,i_1, ..., p_s,i_k, 1 - sum_j p_s,i_j),  p_s = softmax(s / T)
    and the loss is the generalized JSD of `generalized_jsd` over these k + 1 categories: beta = 0 is
    forward KL(teacher || student) (the classic KD direction), beta = 1 reverse KL, 0 < beta < 1 the
    skewed JSD with M = beta * teacher + (1 - beta) * student. With k = vocab it is the dense loss.
    Each tail is log(1 - e^logsumexp(top-k)) computed stably and clipped (>= TAIL_FLOOR, then the
    k + 1 entries renormalised), so no category has probability 0 and nothing is NaN.
    The tail bucket keeps both distributions normalised (docs/conventions.md#cached-teachers); the JSD family is
    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes".

    Temperature: the teacher's full distribution is not available, so the cached top-k cannot be
    re-tempered exactly (softmax(t / T) needs every logit). T therefore divides the *student* logits
    only; the cache must have been written at the same T (log_softmax(teacher_logits / T), then top-k).
    No T^2 factor.

    Args:
      student_logits: `[..., vocab]`.
      teacher_topk_logprobs: `[..., k]`, the teacher's log-probabilities (over its full vocabulary, at
        temperature T) of its k most likely tokens; any order, bf16 is upcast.
      teacher_topk_ids: integer `[..., k]`, distinct ids in [0, vocab) (out-of-range ids are clipped).
      beta: in [0, 1], as in `generalized_jsd`; may be traced.
      temperature: T, applied to the student (see above).
      mask, reduction: as in `forward_kl`.
    """
    _check_topk_shapes(jnp.shape(student_logits), jnp.shape(teacher_topk_logprobs), jnp.shape(teacher_topk_ids))
    if _common.is_concrete_number(beta) and not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1]; got {beta!r}")
    log_ps = _common.log_probs(student_logits, temperature)
    ids = jnp.clip(jnp.asarray(teacher_topk_ids), 0, log_ps.shape[-1] - 1)
    student = _with_tail_bucket(jnp.take_along_axis(log_ps, ids, axis=-1))
    teacher = jnp.asarray(teacher_topk_logprobs)
    teacher = _with_tail_bucket(teacher.astype(jnp.promote_types(teacher.dtype, log_ps.dtype)))
    return reduce_tokens(_common.generalized_jsd_per_position(student, teacher, beta), mask, reduction)


def _sorted_probs(log_probs: Array, size: int) -> Array:
    """Probabilities sorted in decreasing order along the last axis, zero-padded at the end to `size`."""
    probs = -jnp.sort(-jnp.exp(log_probs), axis=-1)
    padding = [(0, 0)] * (probs.ndim - 1) + [(0, size - probs.shape[-1])]
    return jnp.pad(probs, padding)


def uld_loss(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=1.0, mask=None, reduction: str = "mean"
) -> Reduced:
    """Universal Logit Distillation: L1 distance between the sorted student and teacher probabilities.

    Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss".
    Per position, with p_s = softmax(s / T) over the student vocabulary and p_t = softmax(t / T) over
    the teacher's (the sizes may differ):
        ULD = sum_i |sort(p_s)_i - sort(p_t)_i|,
    both sorted in decreasing order and the shorter one zero-padded to the longer length. The paper
    derives it as a closed-form approximation of an optimal-transport (Wasserstein) distance that
    ignores token identities, so it needs no vocabulary mapping; it is symmetric, in [0, 2], invariant
    to permuting either vocabulary, and 0 when the sorted distributions match. The paper adds it to the
    student's CE; positions must already be aligned across the two tokenizations. T divides both logits;
    no T^2 factor.

    Args:
      student_logits: `[..., student_vocab]`.
      teacher_logits: `[..., teacher_vocab]`, the same leading shape.
      temperature: T, divides both logits.
      mask, reduction: as in `forward_kl`.
    """
    student_shape, teacher_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
    if student_shape[:-1] != teacher_shape[:-1]:
        raise ValueError(
            f"student_logits and teacher_logits must share the leading shape; got {student_shape} and {teacher_shape}"
        )
    size = max(student_shape[-1], teacher_shape[-1])
    student = _sorted_probs(_common.log_probs(student_logits, temperature), size)
    teacher = _sorted_probs(_common.log_probs(teacher_logits, temperature), size)
    return reduce_tokens(jnp.sum(jnp.abs(student - teacher), axis=-1), mask, reduction)

"""Token-level logit distillation objectives (docs/methods.md#hinton-kd,
docs/methods.md#generalized-jsd-and-the-other-divergences).

Shapes at the boundary: logits `[..., vocab]` (e.g. `[batch, seq, vocab]`), integer labels and the
mask `[...]`. Symbols in the formulas: `s`, `t` student and teacher logits, `T` the temperature,
`p_s = softmax(s / T)`, `p_t = softmax(t / T)`.

Conventions shared by every function here (see docs/conventions.md):
  - Log-probabilities come from `log_softmax` in float32 whatever the input dtype (bf16 is upcast,
    float64 is kept); mixtures are formed in log space. Never `log(softmax(x))`.
  - The temperature divides the logits of both student and teacher.
  - `mask` is None (every position counts) or a bool / 0-1 array broadcastable to `logits.shape[:-1]`.
  - `reduction` is "mean" (sum over valid positions / number of valid positions, 0 when none is
    valid), "sum", "sum_count" (the pair `(sum, count)`, for gradient accumulation and data-parallel
    shards that must divide by the global count) or "none" (per-position values, masked ones 0).
  - Only `kd` multiplies by T^2 (Hinton-style); the divergences `forward_kl`, `reverse_kl`, `tvd` and
    `generalized_jsd` do not (GKD-style): they measure the divergence between the softened
    distributions themselves; a caller who wants Hinton's gradient scale multiplies by T^2. The recipes
    read each divergence's default scaling from the catalogue in `divergences.py` (T^2 for forward KL).
"""

from __future__ import annotations

from typing import Literal, overload

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses._common import Reduced
from jdistill.losses.reduction import ArrayReduction, reduce_tokens


def _cross_entropy_tokens(logits: ArrayLike, labels: ArrayLike, label_smoothing) -> Array:
    """Per-position CE of integer `labels` `[...]` under `softmax(logits)` `[..., vocab]`."""
    log_p = _common.log_probs(logits, 1.0)
    # Out-of-range labels (e.g. an ignore index such as -100) are clipped so masked positions stay finite.
    labels = jnp.clip(jnp.asarray(labels), 0, log_p.shape[-1] - 1)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    if _common.is_zero(label_smoothing):
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)


@overload
def forward_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature=...,
    mask=...,
    reduction: ArrayReduction = ...,
) -> Array: ...
@overload
def forward_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=..., mask=..., reduction: Literal["sum_count"]
) -> tuple[Array, Array]: ...
@overload
def forward_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=..., mask=..., reduction: str = ...
) -> Reduced: ...
def forward_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=1.0, mask=None, reduction: str = "mean"
) -> Reduced:
    """Forward KL, KL(p_t || p_s) = sum_v p_t (log p_t - log p_s): mean-seeking, the classic KD direction.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    Args:
      student_logits, teacher_logits: `[..., vocab]`; p_s = softmax(s / T), p_t = softmax(t / T).
      temperature: T, divides both logits. No T^2 factor here (GKD-style); `kd` adds Hinton's T^2.
      mask: None or bool / 0-1 `[...]` broadcastable to `logits.shape[:-1]`, true where a position counts.
      reduction: "mean" (sum over valid / count of valid, 0 if none), "sum", "sum_count" -> (sum, count),
        or "none" -> per-position `[...]` with masked positions 0.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    return reduce_tokens(_common.kl(log_pt, log_ps), mask, reduction)


def reverse_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=1.0, mask=None, reduction: str = "mean"
) -> Reduced:
    """Reverse KL, KL(p_s || p_t) = sum_v p_s (log p_s - log p_t): mode-seeking.

    The `beta = 1` end of GKD's generalized JSD (Agarwal et al. 2024, "On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes").

    Args:
      student_logits, teacher_logits: `[..., vocab]`; p_s = softmax(s / T), p_t = softmax(t / T).
      temperature: T, divides both logits. No T^2 factor (GKD-style).
      mask, reduction: as in `forward_kl`.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    return reduce_tokens(_common.kl(log_ps, log_pt), mask, reduction)


def tvd(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature=1.0, mask=None, reduction: str = "mean"
) -> Reduced:
    """Total variation distance, 0.5 * sum_v |p_t - p_s|, symmetric and in [0, 1].

    A bounded token-level divergence for distilling language models (Wen et al. 2023, "f-Divergence
    Minimization for Sequence-Level Knowledge Distillation").

    Args:
      student_logits, teacher_logits: `[..., vocab]`; p_s = softmax(s / T), p_t = softmax(t / T).
      temperature: T, divides both logits. No T^2 factor (GKD-style).
      mask, reduction: as in `forward_kl`.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    per_token = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_pt) - jnp.exp(log_ps)), axis=-1)
    return reduce_tokens(per_token, mask, reduction)


def generalized_jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    beta=0.5,
    temperature=1.0,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Generalized Jensen-Shannon divergence, the per-token objective of GKD.

    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes"; the skewed JSD goes back to Lin 1991, "Divergence Measures Based on the Shannon Entropy".

    M = beta * p_t + (1 - beta) * p_s (formed in log space with logaddexp), and for 0 < beta < 1
        JSD_beta = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M).
    JSD_beta itself tends to 0 at both ends (it is beta * KL(p_t || p_s) + O(beta^2) near 0), but the
    normalised JSD_beta / (beta * (1 - beta)) tends to KL(p_t || p_s) as beta -> 0 and to KL(p_s || p_t)
    as beta -> 1. The endpoints are defined by that continuity of the normalised divergence: `beta=0`
    returns `forward_kl` and `beta=1` returns `reverse_kl` exactly, while interior values are the
    unnormalised JSD_beta (so the returned value jumps at the endpoints; its scale shrinks like
    beta * (1 - beta) near them). This matches Hugging Face TRL's GKD (`generalized_jsd_loss`);
    EasyDeL uses the opposite convention (its beta=0 and beta=1 ends are swapped relative to this one).
    At beta = 0.5 the divergence is symmetric in student and teacher.

    Args:
      student_logits, teacher_logits: `[..., vocab]`; p_s = softmax(s / T), p_t = softmax(t / T).
      beta: scalar in [0, 1], the teacher's weight in the mixture M (GKD's meaning); may be a traced
        array under jit, endpoints included, with finite gradients.
      temperature: T, divides both logits. No T^2 factor (GKD-style, as in GKD).
      mask, reduction: as in `forward_kl`.
    """
    if _common.is_concrete_number(beta) and not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1]; got {beta!r}")
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    return reduce_tokens(_common.generalized_jsd_per_position(log_ps, log_pt, beta), mask, reduction)


@overload
def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, mask=..., reduction: ArrayReduction = ..., label_smoothing=...
) -> Array: ...
@overload
def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, mask=..., reduction: Literal["sum_count"], label_smoothing=...
) -> tuple[Array, Array]: ...
@overload
def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, mask=..., reduction: str = ..., label_smoothing=...
) -> Reduced: ...
def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, mask=None, reduction: str = "mean", label_smoothing=0.0
) -> Reduced:
    """Ground-truth cross-entropy, -sum_v y_v log softmax(logits)_v, for integer labels.

    With label smoothing eps the target is y = (1 - eps) * onehot(label) + eps / vocab (uniform over
    the whole vocabulary), i.e. CE = (1 - eps) * NLL + eps * mean_v(-log p_v). No temperature: this is
    the hard-label term of KD (Hinton et al. 2015), always at T = 1.

    Args:
      logits: `[..., vocab]`.
      labels: integer `[...]`. Labels outside [0, vocab) must be masked out; they are clipped so that
        masked positions stay finite.
      mask, reduction: as in `forward_kl`.
      label_smoothing: eps in [0, 1].
    """
    return reduce_tokens(_cross_entropy_tokens(logits, labels, label_smoothing), mask, reduction)


@overload
def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike | None,
    *,
    temperature=...,
    distill_weight=...,
    label_weight=...,
    mask=...,
    scale_by_temperature_squared: bool = ...,
    reduction: ArrayReduction = ...,
) -> Array: ...
@overload
def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike | None,
    *,
    temperature=...,
    distill_weight=...,
    label_weight=...,
    mask=...,
    scale_by_temperature_squared: bool = ...,
    reduction: Literal["sum_count"],
) -> tuple[Array, Array]: ...
@overload
def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike | None,
    *,
    temperature=...,
    distill_weight=...,
    label_weight=...,
    mask=...,
    scale_by_temperature_squared: bool = ...,
    reduction: str = ...,
) -> Reduced: ...
def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike | None,
    *,
    temperature=1.0,
    distill_weight=1.0,
    label_weight=0.0,
    mask=None,
    scale_by_temperature_squared: bool = True,
    reduction: str = "mean",
) -> Reduced:
    """Hinton knowledge distillation: distill_weight * T^2 * KL(p_t || p_s) + label_weight * CE(y, s).

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". The KL is the forward
    (mean-seeking) direction at temperature T; the CE uses the student logits at T = 1. The T^2 factor
    (on by default, `scale_by_temperature_squared=False` removes it) keeps the distillation gradient,
    T * (p_s - p_t) per position, from shrinking as 1/T^2 when T grows, so the two terms stay balanced
    across temperatures. A recipe may tie `label_weight = 1 - distill_weight`.

    Args:
      student_logits, teacher_logits: `[..., vocab]`.
      labels: integer `[...]`, or None when `label_weight == 0` (a Python 0).
      temperature: T, divides both logits in the KL term.
      distill_weight: weight of the distillation term.
      label_weight: weight of the ground-truth CE term.
      mask: as in `forward_kl`; applies to both terms.
      scale_by_temperature_squared: multiply the KL term by T^2 (default True).
      reduction: as in `forward_kl`; both terms are combined per position before reducing, so with
        "sum_count" the returned `sum / count` equals the "mean" result.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    scale = temperature**2 if scale_by_temperature_squared else 1.0
    per_token = distill_weight * scale * _common.kl(log_pt, log_ps)
    if labels is None:
        if not _common.is_zero(label_weight):
            raise ValueError(f"kd needs labels when label_weight != 0; got labels=None, label_weight={label_weight!r}")
    elif not _common.is_zero(label_weight):
        per_token = per_token + label_weight * _cross_entropy_tokens(student_logits, labels, 0.0)
    return reduce_tokens(per_token, mask, reduction)

"""Robustness and sample weighting: ADR, DCS, SLA + self-distillation, pseudo-label filtering.

docs/methods.md#robustness-and-sample-weighting. Shapes at the boundary: class logits `[batch, classes]` (any
leading axes work where noted), integer labels `[batch]`.

Conventions shared by every function here (see docs/conventions.md):
  - Log-probabilities come from `log_softmax` in float32 whatever the input dtype, through
    `jdistill.losses.logits._log_probs`; teacher-side targets are wrapped in `jax.lax.stop_gradient`.
  - Sample-level objectives reduce by the mean over the batch, optionally weighted with the weights
    renormalised to mean 1.
  - KD-style terms multiply the KL by T^2 (Hinton) unless stated otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses.logits import cross_entropy, forward_kl, kd

# ADR's CIFAR-10 defaults (Wu et al. 2024): temperature and lam are annealed from the first value to
# the second with `cosine_schedule` over training; the EMA teacher decays at ADR_EMA_DECAY.
ADR_TEMPERATURE = (2.5, 2.0)
ADR_LAM = (0.7, 0.95)
ADR_EMA_DECAY = 0.995


def cosine_schedule(step, total, start, end) -> Array:
    """Cosine annealing from `start` (step 0) to `end` (step `total`), constant afterwards.

        value(step) = end + 0.5 * (start - end) * (1 + cos(pi * min(step / total, 1)))

    ADR (Wu et al. 2024) anneals its temperature 2.5 -> 2.0 and its interpolation factor lam
    0.7 -> 0.95 this way (`ADR_TEMPERATURE`, `ADR_LAM`). `step` may be a traced scalar; `total` < 1
    counts as 1.
    """
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(total, 1), 0.0, 1.0)
    return end + 0.5 * (start - end) * (1.0 + jnp.cos(math.pi * fraction))


def adr_labels(ema_logits: ArrayLike, labels: ArrayLike, *, temperature, lam) -> Array:
    """ADR rectified soft labels (Wu et al. 2024, "Annealing Self-Distillation Rectification Improves
    Adversarial Training").

        P_t = softmax(f_ema(x_clean) / tau)
        lam_i = clip(lam - (max_k P_t[i, k] - P_t[i, y_i]), 0, 1)
        label_i = lam_i * P_t[i] + (1 - lam_i) * onehot(y_i)

    When the EMA teacher already predicts y_i, lam_i = lam; the more it prefers a wrong class, the
    more the target falls back to the one-hot label. The result is the target of both the PGD attack
    and the training loss. Defaults from the paper (CIFAR-10): tau annealed 2.5 -> 2.0 and lam
    0.7 -> 0.95 with `cosine_schedule`, EMA decay 0.995 (`ADR_*` constants).

    Args:
      ema_logits: `[..., classes]`, logits of the EMA model on clean inputs (no gradient flows back).
      labels: integer `[...]`.
      temperature: tau, divides the EMA logits. lam: the interpolation factor (may be traced).

    Returns:
      Soft labels `[..., classes]`, float32, each row summing to 1.
    """
    probs = jnp.exp(_common.log_probs(jax.lax.stop_gradient(jnp.asarray(ema_logits)), temperature))
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    true_prob = jnp.sum(probs * onehot, axis=-1)
    lam_i = jnp.clip(lam - (jnp.max(probs, axis=-1) - true_prob), 0.0, 1.0)[..., None]
    return lam_i * probs + (1.0 - lam_i) * onehot


def soft_cross_entropy(logits: ArrayLike, targets: ArrayLike) -> Array:
    """Batch-mean cross-entropy -sum_k q_k log softmax(logits)_k against soft targets q `[..., classes]`.

    The training loss used with `adr_labels`; the targets get no gradient.
    """
    targets = jax.lax.stop_gradient(jnp.asarray(targets))
    return jnp.mean(-jnp.sum(targets * _common.log_probs(logits, 1.0), axis=-1))


def dcs_disagreement(student_logits: ArrayLike, teacher_logits: ArrayLike, *, kind: str = "indicator") -> Array:
    """Per-sample disagreement for `dcs_update_weights`: `[...]`, no gradient.

    kind="indicator": 1.0 where argmax(student) != argmax(teacher), else 0.0.
    kind="kl": KL(p_t || p_s) at temperature 1.
    """
    student, teacher = jax.lax.stop_gradient((jnp.asarray(student_logits), jnp.asarray(teacher_logits)))
    if kind == "indicator":
        return (jnp.argmax(student, axis=-1) != jnp.argmax(teacher, axis=-1)).astype(jnp.float32)
    if kind == "kl":
        return forward_kl(student, teacher, reduction="none")
    raise ValueError(f"kind must be 'indicator' or 'kl'; got {kind!r}")


def dcs_update_weights(weights: ArrayLike, disagreement: ArrayLike, eta) -> Array:
    """Dynamic corrective self-distillation sample re-weighting (paper-inspired; the rule is open).

        w_i <- w_i * exp(eta * d_i), then renormalised to mean 1,

    with d_i the disagreement of sample i (`dcs_disagreement`: a 0/1 indicator student != teacher,
    or the per-sample KL). Samples the student keeps getting wrong relative to the teacher gain
    weight multiplicatively, as in boosting. Computed in log space (a softmax over log w + eta * d,
    times n), so large eta * d cannot overflow. Constant disagreement leaves the weights unchanged.

    Args:
      weights: positive `[batch]` (start from ones).
      disagreement: `[batch]`.
      eta: the step size (>= 0).
    """
    weights = jnp.asarray(weights, jnp.float32)
    logits = jnp.log(weights) + eta * jnp.asarray(disagreement, jnp.float32)
    return weights.size * jax.nn.softmax(logits.ravel()).reshape(weights.shape)


def dcs_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    weights: ArrayLike,
    *,
    distill_weight=0.5,
    temperature=1.0,
    scale_by_temperature_squared: bool = True,
) -> Array:
    """Weighted DCS objective (paper-inspired), mean_i w_i [(1 - a) CE(y_i, s_i) + a T^2 KL(p_t,i || p_s,i)].

    a = `distill_weight`; the KL is the forward direction at temperature T with Hinton's T^2 factor
    (`scale_by_temperature_squared=False` removes it; at T = 1 it makes no difference). The weights
    (from `dcs_update_weights`) are renormalised to mean 1 and carry no gradient, so the result is
    sum_i w_i l_i / sum_i w_i.

    Args:
      student_logits, teacher_logits: `[batch, classes]`.
      labels: integer `[batch]`.
      weights: non-negative `[batch]`, not all 0.
    """
    per_sample = kd(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        distill_weight=distill_weight,
        label_weight=1.0 - distill_weight,
        scale_by_temperature_squared=scale_by_temperature_squared,
        reduction="none",
    )
    weights = jax.lax.stop_gradient(jnp.asarray(weights, per_sample.dtype))
    return jnp.sum(weights * per_sample) / jnp.sum(weights)


def sla_joint_labels(labels: ArrayLike, transform_index, n_transforms: int) -> Array:
    """SLA joint label y * M + j for class y under input transform j of M (Lee et al. 2020,
    "Self-supervised Label Augmentation via Input Transformations"). The joint head has
    n_classes * M outputs; joint class y * M + j means "class y, transformed by j"."""
    return jnp.asarray(labels) * n_transforms + jnp.asarray(transform_index)


def sla_aggregate(joint_logits: ArrayLike, n_classes: int, n_transforms: int) -> Array:
    """SLA aggregated logits, the mean over transforms of each transform's own class logits.

    With joint logits z `[M, batch, n_classes * M]` (row j from the input under transform j, class
    layout y * M + j as in `sla_joint_labels`):
        agg[b, y] = (1 / M) * sum_j z[j, b, y * M + j],
    i.e. z reshaped to `[M, batch, n_classes, M]` and the diagonal over the two transform axes
    averaged (`z[j][:, j::M]` in the official code). softmax(agg) is the paper's aggregated
    prediction P_aggregated(y | x) proportional to exp(mean_j z_{y, j}). With M = 1, agg == z[0].

    Returns:
      `[batch, n_classes]`.
    """
    joint_logits = jnp.asarray(joint_logits)
    expected = (n_transforms, n_classes * n_transforms)
    if (joint_logits.shape[0], joint_logits.shape[-1]) != expected:
        raise ValueError(
            f"joint_logits must be [n_transforms, batch, n_classes * n_transforms] = "
            f"[{expected[0]}, batch, {expected[1]}]; got {joint_logits.shape}"
        )
    split = joint_logits.reshape(n_transforms, joint_logits.shape[1], n_classes, n_transforms)
    diagonal = jnp.diagonal(split, axis1=0, axis2=3)  # [batch, n_classes, M]
    return jnp.mean(diagonal, axis=-1)


def sla_self_distillation_loss(
    joint_logits: ArrayLike, single_logits: ArrayLike, labels: ArrayLike, *, temperature=1.0
) -> Array:
    """SLA + self-distillation objective (Lee et al. 2020, "SLA+SD"):

        L = CE(joint head, y * M + j) + CE(single head, y) + T^2 KL(softmax(agg / T) || softmax(single / T)),

    the first term averaged over all M * batch transformed inputs, the others over the batch;
    agg = `sla_aggregate(joint_logits)` is detached (stop_gradient), so the single head learns from
    the aggregated joint prediction and not the other way round.

    Args:
      joint_logits: `[M, batch, n_classes * M]`, the joint head on every transformed input.
      single_logits: `[batch, n_classes]`, the single (plain-label) head on the untransformed input.
      labels: integer `[batch]`.
      temperature: T of the KL term (T^2-scaled, Hinton-style).
    """
    joint_logits = jnp.asarray(joint_logits)
    n_transforms = joint_logits.shape[0]
    n_classes = jnp.shape(single_logits)[-1]
    aggregated = jax.lax.stop_gradient(sla_aggregate(joint_logits, n_classes, n_transforms))
    transform_index = jnp.arange(n_transforms)[:, None]
    joint_labels = sla_joint_labels(jnp.asarray(labels)[None, :], transform_index, n_transforms)
    joint_term = cross_entropy(joint_logits, joint_labels)
    single_term = cross_entropy(single_logits, labels)
    distill_term = kd(single_logits, aggregated, None, temperature=temperature)
    return joint_term + single_term + distill_term


def filter_pseudo_labels(
    teacher_logits: ArrayLike, *, threshold, proxy_logits: ArrayLike | None = None
) -> tuple[Array, Array]:
    """Label-free pseudo-label filtering (docs/methods.md#pseudo-label-filtering; the scoring rule is open).

    The pseudo-label is the teacher's argmax. Its score is
      - without a proxy: the teacher's confidence max_k softmax(teacher)_k;
      - with a proxy model: the proxy's probability of the teacher's label, softmax(proxy)[label],
        i.e. soft agreement. A threshold >= 0.5 then also implies the proxy's argmax agrees.
    A label is kept where score >= threshold.

    Args:
      teacher_logits: `[..., classes]`.
      threshold: in [0, 1].
      proxy_logits: None or `[..., classes]`.

    Returns:
      `(labels, keep)`: integer labels `[...]` and a bool mask `[...]` (use it as the `mask` of a
      token-level objective, or to drop samples).
    """
    teacher_log_probs = _common.log_probs(jax.lax.stop_gradient(jnp.asarray(teacher_logits)), 1.0)
    labels = jnp.argmax(teacher_log_probs, axis=-1)
    if proxy_logits is None:
        score_log_probs = teacher_log_probs
    else:
        score_log_probs = _common.log_probs(jax.lax.stop_gradient(jnp.asarray(proxy_logits)), 1.0)
    score = jnp.exp(jnp.take_along_axis(score_log_probs, labels[..., None], axis=-1)[..., 0])
    return labels, score >= threshold

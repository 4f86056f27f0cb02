"""Self-distillation objectives and targets (docs/methods.md, section Logit distillation).

Shapes at the boundary: logits `[..., vocab]` (e.g. `[batch, seq, vocab]` or `[batch, classes]`),
integer labels and the mask `[...]`. Symbols: `s`, `t` student and teacher logits, `T` the
temperature, `p_s = softmax(s / T)`, `p_t = softmax(t / T)`, `onehot(y)` the label's one-hot vector.

The token-level objectives here follow `logits.py`: float32 log-probabilities whatever the input
dtype, mixtures formed in log space, `mask=None` means every position counts, and `reduction` is
"mean", "sum", "sum_count" or "none" (see `reduce_tokens`). None of them multiplies by T^2.
Self-distillation in kernel-ridge form (Borup & Andersen) is in `kernel_ridge.py`.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses._common import Reduced
from jdistill.losses.reduction import reduce_tokens

ENSEMBLE_METHODS = ("mean", "vote")


def _label_log_probs(log_p: Array, labels: ArrayLike) -> Array:
    """log p[label] per position; out-of-range labels (masked positions) are clipped to stay finite."""
    labels = jnp.clip(jnp.asarray(labels), 0, log_p.shape[-1] - 1)
    return jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def _soft_cross_entropy(log_p: Array, log_q: Array) -> Array:
    """-sum_v p_v log q_v over the last axis; a term with p_v == 0 contributes exactly 0."""
    p = jnp.exp(log_p)
    support = p > 0
    return -jnp.sum(jnp.where(support, p * jnp.where(support, log_q, 0.0), 0.0), axis=-1)


# --- self-distillation with xi (Das & Sanghavi 2023) ------------------------------------------------


def xi_self_distillation(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    xi,
    temperature=1.0,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Self-distillation with mixing weight xi: L = xi * CE(p_t, p_s) + (1 - xi) * CE(onehot(y), p_s).

    Das & Sanghavi 2023, "Understanding Self-Distillation in the Presence of Label Noise". The loss is
    the cross-entropy CE(tau, p_s) = -sum_v tau_v log p_s,v to the mixed target
    tau = xi * p_t + (1 - xi) * onehot(y): the teacher term is the forward direction (teacher
    distribution as target). xi = 0 is plain CE to the labels, xi = 1 is CE to the teacher.

    xi may exceed 1 (the paper's optima at 50% symmetric label noise are xi = 1.5 to 3.5). Then
    tau has a negative entry at the label (1 - xi + xi * p_t,y < 0 when p_t,y is small), and the loss
    is unbounded below: the student can push log p_s,y -> -inf. The paper's analysis relies on
    regularisation (weight decay / a linear head); call `warn_if_unregularised` when building a recipe.

    Args:
      student_logits, teacher_logits: `[..., vocab]`.
      labels: integer `[...]`; labels outside [0, vocab) must be masked out (they are clipped).
      xi: the teacher's weight (a Python number or a traced scalar), any real value.
      temperature: T divides both logits, in both terms, so that L = CE(tau, p_s) holds exactly; the
        paper's setting is T = 1. No T^2 factor.
      mask, reduction: as in `forward_kl`.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    per_token = xi * _soft_cross_entropy(log_pt, log_ps) - (1.0 - xi) * _label_log_probs(log_ps, labels)
    return reduce_tokens(per_token, mask, reduction)


def warn_if_unregularised(xi, weight_decay) -> bool:
    """Warns through `warnings.warn` when xi > 1 and weight_decay == 0, once per process.

    With xi > 1 the `xi_self_distillation` target has a negative entry and the loss is unbounded
    below unless the student is regularised. Returns True when the warning condition holds.
    """
    unregularised = xi > 1 and weight_decay == 0
    if unregularised:
        # A constant message from a fixed location: Python's default filter shows it once per process.
        warnings.warn(
            "xi_self_distillation with xi > 1 and weight_decay == 0: the loss is unbounded below; "
            "add weight decay (or train a linear head).",
            UserWarning,
            stacklevel=1,
        )
    return unregularised


# --- PS-KD (Kim et al. 2021) --------------------------------------------------------------------------


def pskd_alpha(epoch, num_epochs: float, alpha_T=0.8):
    """PS-KD's target weight alpha_t = alpha_T * (epoch + 1) / E, growing linearly to alpha_T.

    Kim et al. 2021, "Self-Knowledge Distillation with Progressive Refinement of Targets". `epoch`
    counts from 0 (it may be a traced scalar); `alpha_T` is the paper's final weight (default 0.8).
    """
    if num_epochs <= 0:
        raise ValueError(f"num_epochs must be > 0; got {num_epochs!r}")
    return alpha_T * (epoch + 1) / num_epochs


def pskd_initial_buffer(labels: ArrayLike, num_classes: int) -> Array:
    """The PS-KD buffer P before its first write: onehot(labels), float32 `[..., num_classes]`."""
    return jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)


def pskd_targets(labels: ArrayLike, past_probs: ArrayLike, alpha) -> Array:
    """PS-KD soft targets (1 - alpha) * onehot(y) + alpha * P, with P the model's previous-epoch softmax.

    Kim et al. 2021, "Self-Knowledge Distillation with Progressive Refinement of Targets". The target
    is trained against with CE; the buffer P (`pskd_initial_buffer`) is overwritten with the
    network's own softmax (at T = 1) after each use, so the first target equals the one-hot label.

    Args:
      labels: integer `[...]` or one-hot / soft `[..., classes]` (told apart by shape and dtype).
      past_probs: P, `[..., classes]`, rows summing to 1.
      alpha: the weight from `pskd_alpha`, in [0, 1].
    """
    past_probs = jnp.asarray(past_probs)
    past_probs = past_probs.astype(jnp.promote_types(past_probs.dtype, jnp.float32))
    labels = jnp.asarray(labels)
    if labels.shape == past_probs.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
        labels = jax.nn.one_hot(labels, past_probs.shape[-1], dtype=past_probs.dtype)
    elif labels.shape != past_probs.shape:
        raise ValueError(
            f"labels must be integer {past_probs.shape[:-1]} or one-hot {past_probs.shape}; got shape {labels.shape}"
        )
    return (1.0 - alpha) * labels.astype(past_probs.dtype) + alpha * past_probs


# --- Self-Evolution KD (paper-inspired; Song et al. 2024) ---------------------------------------------


def _prior_log_probs(log_pt: Array, labels: ArrayLike) -> Array:
    """log r with r = 0.5 * (p_t + onehot(y)), formed without log(0): log1p(p_t) at the label."""
    labels = jnp.clip(jnp.asarray(labels), 0, log_pt.shape[-1] - 1)
    is_label = jnp.arange(log_pt.shape[-1]) == labels[..., None]
    return jnp.log(0.5) + jnp.where(is_label, jnp.log1p(jnp.exp(log_pt)), log_pt)


def token_difficulty(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, *, temperature=1.0, mask=None
) -> Array:
    """Per-position difficulty KL(r || p_s) `[...]`, with prior r = 0.5 * (p_t + onehot(y)).

    Paper-inspired: Song et al. 2024, "Self-Evolution Knowledge Distillation for LLM-based Machine
    Translation". Large when the student misses both the teacher and the label. T divides both logits.
    Masked positions (`mask` as in `forward_kl`) are 0.
    """
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    return reduce_tokens(_common.kl(_prior_log_probs(log_pt, labels), log_ps), mask, "none")


def _hard_token_gammas(difficulty: Array, valid: Array, hard_fraction, gamma_max) -> Array:
    """gamma_i = gamma_max * d_i / max_valid d on the ceil(hard_fraction * n_valid) hardest valid tokens, else 0."""
    flat = jnp.where(valid, difficulty, -jnp.inf).reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    hard = valid.reshape(-1) & (rank < hard_fraction * jnp.sum(valid))
    largest = jnp.max(jnp.where(valid, difficulty, 0.0))
    gamma = gamma_max * difficulty / jnp.where(largest > 0, largest, 1.0)
    return jnp.where(hard.reshape(difficulty.shape), gamma, 0.0)


def self_evolution_kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    hard_fraction=0.5,
    gamma_max=0.5,
    temperature=1.0,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Difficulty-aware KD: hard tokens distil into a student distribution mixed with a prior.

    Paper-inspired (the method is specified only in prose): Song et al. 2024, "Self-Evolution
    Knowledge Distillation for LLM-based Machine Translation". Per valid token i:
      - difficulty d_i = KL(r_i || p_s,i), r = 0.5 * (p_t + onehot(y)) (`token_difficulty`);
      - the ceil(hard_fraction * n_valid) hardest valid tokens *of this call* are hard; they get
        gamma_i = gamma_max * d_i / max_valid d (under stop_gradient) and the loss
        KL(p_t || p~_s), p~_s = (1 - gamma_i) p_s + gamma_i r (mixed in log space with logaddexp);
      - easy tokens get plain forward KL(p_t || p_s).
    Mixing in r bounds the hard tokens' loss (p~_s >= gamma_i r >= gamma_i p_t / 2) and lowers their
    gradient. Gradients treat the selection and gamma as constants (they are not the derivative of
    the loss through d_i). Unlike plain KD, a hard token's loss is not 0 at p_s == p_t (its student
    side is the mixture). gamma_max = 0 (or hard_fraction = 0) is token-level `forward_kl`. The selection and the
    normalisation by max d depend on the whole call, so "sum_count" pieces of micro-batches do not add
    up to the full-batch result unless gamma_max = 0.

    Args:
      student_logits, teacher_logits: `[..., vocab]`.
      labels: integer `[...]`; out-of-range labels must be masked out (they are clipped).
      hard_fraction: fraction of valid tokens treated as hard, in [0, 1].
      gamma_max: the hardest token's prior weight, in [0, 1).
      temperature: T divides both logits (difficulty, prior and loss). No T^2 factor.
      mask, reduction: as in `forward_kl`.
    """
    if _common.is_concrete_number(gamma_max) and not 0 <= gamma_max < 1:
        raise ValueError(f"gamma_max must be in [0, 1); got {gamma_max!r}")
    if _common.is_concrete_number(hard_fraction) and not 0 <= hard_fraction <= 1:
        raise ValueError(f"hard_fraction must be in [0, 1]; got {hard_fraction!r}")
    log_ps, log_pt = _common.pair_log_probs(student_logits, teacher_logits, temperature)
    log_r = _prior_log_probs(log_pt, labels)
    batch_shape = log_ps.shape[:-1]
    valid = jnp.ones(batch_shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask) != 0, batch_shape)
    difficulty = jax.lax.stop_gradient(_common.kl(log_r, log_ps))
    gamma = jax.lax.stop_gradient(_hard_token_gammas(difficulty, valid, hard_fraction, gamma_max))[..., None]
    # Double-where: the mixture sees a harmless gamma where gamma == 0, so log(0) never enters its gradient.
    mixed = gamma > 0
    inner = jnp.where(mixed, gamma, 0.5)
    log_mixture = jnp.logaddexp(jnp.log1p(-inner) + log_ps, jnp.log(inner) + log_r)
    per_token = jnp.where(mixed[..., 0], _common.kl(log_pt, log_mixture), _common.kl(log_pt, log_ps))
    return reduce_tokens(per_token, valid, reduction)


# --- voting / snapshot ensembles (SD-DARTS) ---------------------------------------------------------


def ensemble_teacher_log_probs(
    teacher_logits_stack: ArrayLike, *, temperature=1.0, method: str = "mean", vote_smoothing=0.0
) -> Array:
    """Log-probabilities `[..., vocab]` of a teacher built from several models `[models, ..., vocab]`.

    Voting / snapshot teachers as in SD-DARTS (Zhu, Li, Liu & Wang 2023, "Improving Differentiable
    Architecture Search via Self-Distillation"): the teacher aggregates earlier checkpoints' predictions.
      - "mean": log of the mean of the models' softmax(logits / T), i.e. logsumexp over models of
        their log-probs minus log(n). One model gives its own log_softmax.
      - "vote": majority vote of the models' argmaxes (ties go to the class with the higher mean
        probability, then the lower index) as a one-hot target smoothed to
        (1 - vote_smoothing) * onehot + vote_smoothing / vocab. With the default vote_smoothing = 0
        the non-voted classes have log-probability -inf: fine as the target of `forward_kl` or CE
        (zero-probability terms contribute 0), but reverse KL and JSD need vote_smoothing > 0.
    The result carries gradients to the stack ("mean"), though a teacher is normally under stop_gradient.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, ENSEMBLE_METHODS))}; got {method!r}")
    stack_shape = jnp.shape(teacher_logits_stack)
    if len(stack_shape) < 2 or stack_shape[0] == 0:
        raise ValueError(f"teacher_logits_stack must be [models >= 1, ..., vocab]; got shape {stack_shape}")
    log_p = _common.log_probs(teacher_logits_stack, temperature)
    num_models, vocab = log_p.shape[0], log_p.shape[-1]
    log_mean = jax.nn.logsumexp(log_p, axis=0) - math.log(num_models)
    if method == "mean":
        return log_mean
    votes = jnp.sum(jax.nn.one_hot(jnp.argmax(log_p, axis=-1), vocab, dtype=log_p.dtype), axis=0)
    winner = jnp.argmax(votes + 0.5 * jnp.exp(jax.lax.stop_gradient(log_mean)), axis=-1)
    target = (1.0 - vote_smoothing) * jax.nn.one_hot(winner, vocab, dtype=log_p.dtype) + vote_smoothing / vocab
    return jnp.log(target)

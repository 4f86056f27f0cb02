"""Intermediate and structural distillation: hint losses, attention transfer, multi-exit self-distillation.

docs/methods.md#feature-and-attention-transfer, docs/methods.md#multi-exit-self-distillation. Shapes at the boundary:
features `[..., d]` (e.g.
`[batch, seq, d]`), one vector per position; activation maps `[batch, *spatial, channels]`
(channels last, the JAX layout; `channel_axis` changes it); exit logits `[..., vocab]`.

Conventions shared by every function here (see docs/conventions.md):
  - Math in float32 whatever the input dtype (bf16 is upcast, float64 is kept).
  - `mask` and `reduction` of the per-position losses work as in `jdistill.losses.logits`
    (`reduce_tokens`: sum over valid positions / number of valid positions, or "sum", "sum_count",
    "none").
  - Feature losses do not stop the teacher's gradient (the recipe runs the teacher under
    `stop_gradient`); the multi-exit loss does, because its teachers are exits of the student itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses._common import Reduced
from jdistill.losses.logits import cross_entropy, kd
from jdistill.losses.reduction import reduce_tokens


def _float32_or_wider(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _project(student_features: ArrayLike, teacher_features: ArrayLike, projection) -> tuple[Array, Array]:
    """Student features mapped into the teacher's width (through `projection` if given), both in float32+."""
    student, teacher = _float32_or_wider(student_features), _float32_or_wider(teacher_features)
    d_s, d_t = student.shape[-1], teacher.shape[-1]
    if projection is None:
        if d_s != d_t:
            raise ValueError(f"student and teacher feature widths differ ({d_s} vs {d_t}); pass projection [d_s, d_t]")
        return student, teacher
    projection = jnp.asarray(projection)
    if projection.shape != (d_s, d_t):
        raise ValueError(f"projection must have shape [d_s, d_t] = [{d_s}, {d_t}]; got {list(projection.shape)}")
    projected = jnp.matmul(student, projection.astype(student.dtype), precision=jax.lax.Precision.HIGHEST)
    return projected, teacher


def hint_mse(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    projection: ArrayLike | None = None,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """FitNets hint loss: per position, mean_d (r(u) - v)^2, then reduced over valid positions.

    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets": the student's guided layer u is mapped by a
    regressor r into the teacher's hint space v and trained with L = 1/2 ||r(u) - v||^2. Here r is
    the linear map u @ W with W = `projection` `[d_s, d_t]` (a learned parameter of the student; None
    when the widths already match), and the squared error is averaged over the feature axis (as
    `nn.MSELoss` does), not halved, so the value does not grow with the width. No temperature.

    Args:
      student_features: `[..., d_s]`. teacher_features: `[..., d_t]`.
      projection: None or `[d_s, d_t]`.
      mask, reduction: as in `jdistill.losses.logits.forward_kl`, over the positions `[...]`.
    """
    student, teacher = _project(student_features, teacher_features, projection)
    return reduce_tokens(jnp.mean(jnp.square(student - teacher), axis=-1), mask, reduction)


def _l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """x / max(||x||, eps), with a finite gradient at x = 0 (like `F.normalize`)."""
    squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))


def hint_cosine(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    projection: ArrayLike | None = None,
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Cosine hint loss: per position 1 - cos(r(u), v), in [0, 2], then reduced over valid positions.

    The direction-only variant of the FitNets hint (Romero et al. 2015), insensitive to the scale of
    either feature; r(u) = u @ `projection` as in `hint_mse`. A zero vector has cosine 0 with
    everything (the norm is clamped at 1e-12), so the loss stays finite.

    Args: as in `hint_mse`.
    """
    student, teacher = _project(student_features, teacher_features, projection)
    cosine = jnp.sum(_l2_normalize(student) * _l2_normalize(teacher), axis=-1)
    return reduce_tokens(1.0 - cosine, mask, reduction)


def attention_map(feature_maps: ArrayLike, *, p=2, channel_axis: int = -1) -> Array:
    """Spatial attention map of Zagoruyko & Komodakis 2017: Q = normalize(mean_c |A_c|^p), flattened.

    Args:
      feature_maps: `[batch, *spatial, channels]` (or channels at `channel_axis`).
      p: the exponent (the paper uses 2).
    Returns:
      `[batch, prod(spatial)]`, each row of unit L2 norm (or 0 for an all-zero map).
    """
    maps = _float32_or_wider(feature_maps)
    attention = jnp.mean(jnp.abs(maps) ** p, axis=channel_axis)
    return _l2_normalize(attention.reshape(attention.shape[0], -1))


def attention_transfer(student_maps: ArrayLike, teacher_maps: ArrayLike, *, p=2, channel_axis: int = -1) -> Array:
    """Attention transfer (AT): mean over batch and positions of (Q_s - Q_t)^2.

    Zagoruyko & Komodakis 2017, "Paying More Attention to Attention". Each activation tensor A is
    reduced to a spatial map mean_c |A_c|^p (p = 2), flattened and L2-normalised per sample
    (`attention_map`); channel counts may differ between student and teacher, spatial sizes must
    match. The paper writes the loss as beta/2 * ||Q_s/||Q_s|| - Q_t/||Q_t|| ||_2 per layer pair;
    the official code uses the *squared* difference averaged over batch and positions,
    `(at(x) - at(y)).pow(2).mean()`, with beta = 1e3 applied outside and the pairs summed. This
    function returns that per-pair mean (multiply by beta / 2 and sum over layer pairs in the recipe).

    Returns:
      A float32 scalar (float64 for float64 inputs).
    """
    student_shape, teacher_shape = list(jnp.shape(student_maps)), list(jnp.shape(teacher_maps))
    del student_shape[channel_axis], teacher_shape[channel_axis]
    if student_shape != teacher_shape:
        raise ValueError(
            f"student and teacher maps must share [batch, *spatial]; got {student_shape} vs {teacher_shape}"
        )
    student = attention_map(student_maps, p=p, channel_axis=channel_axis)
    teacher = attention_map(teacher_maps, p=p, channel_axis=channel_axis)
    return jnp.mean(jnp.square(student - teacher))


def multi_exit_weights(num_exits: int, *, scheme: str = "linear") -> Array:
    """Per-exit loss weights for `hierarchical_multi_exit_loss`, shallow to deep, summing to 1.

    scheme="linear": w_k proportional to k = 1..num_exits (deeper exits weigh more);
    scheme="uniform": w_k = 1 / num_exits. The weighting is open in MoSE; both are offered.
    """
    if num_exits < 1:
        raise ValueError(f"num_exits must be >= 1; got {num_exits!r}")
    if scheme == "linear":
        raw = jnp.arange(1, num_exits + 1, dtype=jnp.float32)
    elif scheme == "uniform":
        raw = jnp.ones(num_exits, jnp.float32)
    else:
        raise ValueError(f"scheme must be 'linear' or 'uniform'; got {scheme!r}")
    return raw / jnp.sum(raw)


def hierarchical_multi_exit_loss(
    exit_logits: Sequence[ArrayLike],
    labels: ArrayLike | None,
    *,
    temperature=1.0,
    weights: ArrayLike | None = None,
    distill_weight=1.0,
    label_weight=1.0,
    teacher: str = "next",
    mask=None,
    reduction: str = "mean",
) -> Reduced:
    """Hierarchical multi-exit self-distillation (paper-inspired, after MoSE; the exact form is open).

    Exits are ordered shallow to deep; the last one is the model's final output. Exit k learns from
    the labels and from a deeper exit:
        L = sum_k w_k [label_weight * CE(y, z_k) + distill_weight * T^2 KL(p_{teacher(k)} || p_k)],
    with p = softmax(z / T), teacher(k) = k + 1 (`teacher="next"`, each exit teaches the one just
    before it) or the final exit (`teacher="final"`), the teacher's logits under `stop_gradient`
    (so deeper exits are never pulled towards shallower ones), and no distillation term for the
    final exit. Choices made here: Hinton's T^2 on the KL, per-position terms combined before the
    reduction (as `kd` does), default weights `multi_exit_weights(n, scheme="linear")`.

    Args:
      exit_logits: sequence of `[..., vocab]` arrays, shallow to deep, all of the same shape.
      labels: integer `[...]`, or None when `label_weight == 0` (a Python 0).
      temperature: T of the KL terms. weights: None or `[num_exits]`.
      distill_weight, label_weight: weights of the two terms at every exit.
      teacher: "next" or "final".
      mask, reduction: as in `jdistill.losses.logits.forward_kl`.
    """
    num_exits = len(exit_logits)
    if teacher not in ("next", "final"):
        raise ValueError(f"teacher must be 'next' or 'final'; got {teacher!r}")
    if labels is None and not _common.is_zero(label_weight):
        raise ValueError(f"hierarchical_multi_exit_loss needs labels when label_weight != 0; got {label_weight!r}")
    weights = multi_exit_weights(num_exits) if weights is None else jnp.asarray(weights, jnp.float32)
    if weights.shape != (num_exits,):
        raise ValueError(f"weights must have shape [{num_exits}] (one per exit); got {list(weights.shape)}")
    total: Array | float = 0.0
    for k, logits in enumerate(exit_logits[:-1]):
        target = jax.lax.stop_gradient(jnp.asarray(exit_logits[k + 1 if teacher == "next" else -1]))
        per_token = kd(
            logits,
            target,
            labels,
            temperature=temperature,
            distill_weight=distill_weight,
            label_weight=label_weight,
            reduction="none",
        )
        total = total + weights[k] * per_token
    if labels is not None and not _common.is_zero(label_weight):  # labels=None only with label_weight 0 (above)
        total = total + weights[-1] * label_weight * cross_entropy(exit_logits[-1], labels, reduction="none")
    total = jnp.broadcast_to(jnp.asarray(total), jnp.shape(exit_logits[-1])[:-1])
    return reduce_tokens(total, mask, reduction)

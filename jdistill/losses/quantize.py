"""Quantized distillation (docs/methods.md#quantized-distillation).

Polino, Pascanu & Alistarh 2018, "Model compression via distillation and quantization". The student
keeps full-precision weights w; every forward and backward pass runs at the quantized weights Q(w),
and the gradient computed there is applied to w (straight-through: dQ/dw is taken as the identity).
The student is trained against the teacher with the KD loss `quantized_distillation_loss`.

Shapes: weights of any shape; logits `[..., classes]`, integer labels `[...]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses.logits import kd


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in [1, 32]; got {bits!r}")


@jax.jit
def _quantize_rows(rows: Array, steps: Array) -> Array:
    """Min-max uniform quantisation of each row of `rows` `[buckets, bucket_size]` onto `steps + 1` levels.

    `steps` is an array argument so that one compiled program serves every bit width.
    """
    low = jnp.min(rows, axis=-1, keepdims=True)
    span = jnp.max(rows, axis=-1, keepdims=True) - low
    # A constant bucket (span 0) is already on a level; the safe span keeps 0/0 out of the graph.
    safe_span = jnp.where(span > 0, span, 1.0)
    quantized = jnp.round((rows - low) / safe_span * steps) / steps * safe_span + low
    return jnp.where(span > 0, quantized, rows)


def quantize(w: ArrayLike, bits: int, *, bucket_size: int | None = None) -> Array:
    """Uniform min-max quantisation with 2^bits levels and deterministic rounding (Polino et al. 2018).

    The weights are flattened and cut into buckets of `bucket_size` consecutive entries (None: the
    whole tensor is one bucket; the official code's default is 256). In each bucket, with
    beta = min and alpha = max - min and s = 2^bits - 1 steps,
        Q(v) = round((v - beta) / alpha * s) / s * alpha + beta,
    rounding to the nearest level (ties to even), so every bucket holds at most 2^bits distinct values,
    its min and max are kept, and Q is idempotent up to float rounding. A constant bucket is left
    unchanged. The last, partial bucket is padded with its own last entry, which changes neither its
    min nor its max. Computed in at least float32 and returned in the input's dtype.

    Args:
      w: weights, any shape.
      bits: 1..32 (Python int).
      bucket_size: None or a positive int.
    """
    _check_bits(bits)
    w = jnp.asarray(w)
    if bucket_size is not None and (not isinstance(bucket_size, int) or bucket_size < 1):
        raise ValueError(f"bucket_size must be None or a positive int; got {bucket_size!r}")
    if w.size == 0:
        return w
    flat = w.astype(jnp.promote_types(w.dtype, jnp.float32)).ravel()
    size = flat.size if bucket_size is None else bucket_size
    padding = -flat.size % size
    padded = jnp.pad(flat, (0, padding), mode="edge")
    # 2^bits - 1 steps, as a float: the Python int 2^32 - 1 would overflow int32.
    steps = jnp.asarray(2.0**bits - 1.0, flat.dtype)
    quantized = _quantize_rows(padded.reshape(-1, size), steps).ravel()
    return quantized[: flat.size].reshape(w.shape).astype(w.dtype)


def quantize_ste(w: ArrayLike, bits: int, bucket_size: int | None = None) -> Array:
    """Quantisation with a straight-through gradient: the value of Q(w), the gradient of the identity.

        quantize_ste(w) = w + stop_gradient(Q(w) - w)

    Use it on the student's full-precision parameters inside the loss, so the forward pass sees
    Q(w) and the optimizer updates w with the gradient taken at Q(w) (Polino et al. 2018).
    """
    w = jnp.asarray(w)
    return w + jax.lax.stop_gradient(quantize(w, bits, bucket_size=bucket_size) - w)


def quantize_tree_ste(params, bits: int, bucket_size: int | None = None):
    """`quantize_ste` mapped over a parameter tree (every floating leaf)."""

    def leaf(x):
        x = jnp.asarray(x)
        return quantize_ste(x, bits, bucket_size) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(leaf, params)


def quantized_distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    temperature=2.0,
    *,
    distill_weight=0.7,
    mask=None,
    reduction: str = "mean",
):
    """Quantized-distillation objective, distill_weight * T^2 * KL(p_t || p_s) + (1 - distill_weight) * CE(y, s).

    Polino et al. 2018 train the quantized student with Hinton's KD loss; defaults 0.7 * T^2 * KL +
    0.3 * CE at T = 2, as in the paper's official code. The KL is the forward (mean-seeking)
    direction with both logits divided by T; the CE is at T = 1. This is `kd` with
    `label_weight = 1 - distill_weight`.

    Args:
      student_logits, teacher_logits: `[..., classes]`. labels: integer `[...]`.
      temperature: T. distill_weight: weight of the distillation term.
      mask, reduction: as in `jdistill.losses.logits.forward_kl`.
    """
    return kd(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        distill_weight=distill_weight,
        label_weight=1.0 - distill_weight,
        mask=mask,
        reduction=reduction,
    )

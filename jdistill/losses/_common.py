"""Helpers shared by the loss modules (private to `jdistill.losses`; other modules use the public objectives).

Conventions they implement (docs/conventions.md): log-probabilities come from `log_softmax` in at least float32
whatever the input dtype, never `log(softmax(x))`; the temperature divides the logits; a KL term whose p_v is 0
contributes exactly 0 with a zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

Reduced = Array | tuple[Array, Array]


def is_concrete_number(value) -> bool:
    """True for a Python int or float (not a bool, not an array): a value that can be checked at trace time."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_zero(value) -> bool:
    """True only for a Python number equal to 0, so a term can be skipped at trace time."""
    return is_concrete_number(value) and value == 0


def log_probs(logits: ArrayLike, temperature) -> Array:
    """`log_softmax(logits / temperature)` over the last axis, in at least float32."""
    if is_concrete_number(temperature) and temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jax.nn.log_softmax(logits / temperature, axis=-1)


def pair_log_probs(student_logits: ArrayLike, teacher_logits: ArrayLike, temperature) -> tuple[Array, Array]:
    """Student and teacher log-probabilities at `temperature`, after checking the shapes agree (never broadcast)."""
    student_shape, teacher_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
    if student_shape[-1] != teacher_shape[-1]:
        raise ValueError(
            f"student_logits and teacher_logits must share the vocab axis; got {student_shape[-1]} and "
            f"{teacher_shape[-1]}"
        )
    if student_shape != teacher_shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape; got {student_shape} and {teacher_shape}"
        )
    return log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)


def kl(log_p: Array, log_q: Array) -> Array:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis, from log-probabilities.

    A term whose p_v is 0 (underflowed, or a -inf logit) contributes exactly 0 with a zero gradient,
    instead of `0 * (-inf) = NaN`.
    """
    p = jnp.exp(log_p)
    support = p > 0
    log_ratio = jnp.where(support, log_p - log_q, 0.0)
    return jnp.sum(jnp.where(support, p * log_ratio, 0.0), axis=-1)


def generalized_jsd_per_position(log_ps: Array, log_pt: Array, beta) -> Array:
    """Per-position generalized JSD of `losses.generalized_jsd` (beta = 0 forward KL, 1 reverse KL); `beta` may be
    a traced scalar."""
    beta = jnp.asarray(beta, dtype=log_ps.dtype)
    at_zero, at_one = beta == 0, beta == 1
    # Double-where: the mixture branch sees a harmless beta at the endpoints, so log(0) never enters
    # its forward or backward pass and the gradient stays finite there.
    inner = jnp.where(at_zero | at_one, 0.5, beta)
    log_m = jnp.logaddexp(log_pt + jnp.log(inner), log_ps + jnp.log1p(-inner))
    jsd = inner * kl(log_pt, log_m) + (1.0 - inner) * kl(log_ps, log_m)
    return jnp.where(at_zero, kl(log_pt, log_ps), jnp.where(at_one, kl(log_ps, log_pt), jsd))


def array_namespace(*arrays):
    """numpy when every input is a numpy array or number, else jax.numpy (so float64 numpy stays float64)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np

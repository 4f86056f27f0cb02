"""Generalized JSD between two LMs' next-token distributions at chosen positions, from hidden states, chunked.

Given the final hidden states of both models over a sequence and their output heads, the divergence is taken
only at `positions` (e.g. a completion's tokens: TRL's `logits_to_keep`), and the head is applied chunk by chunk,
so neither model's `[batch, seq, vocab]` logits exist, nor the `[batch, positions, vocab]` ones at once: one
`[batch, chunk_size // batch, vocab]` block of each at a time.

Unlike `jdistill.losses.chunked` (which rematerialises each chunk in the backward pass), the gradient with
respect to the student's logits is formed in the forward pass, chunk by chunk, and pushed straight into the
gradients of the student's hidden states, head kernel and bias (a custom VJP); the backward pass only scales them.
So each chunk's two head matmuls run once, plus the two gradient matmuls, and nothing is recomputed. The teacher
side gets no gradient (stop_gradient).

Shapes:
    student_hidden [batch, seq, d_student], student_head [d_student, vocab] (bias [vocab] optional)
    teacher_hidden [batch, seq, d_teacher], teacher_head [d_teacher, vocab] (bias [vocab] optional)
    positions [batch, k] int (indices into seq), mask [batch, k] bool / 0-1 or None
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jdistill.losses.reduction import check_reduction


def _head(hidden, kernel, bias):
    return jnp.dot(hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32) + bias


def jsd_and_logit_gradient(student_logits, teacher_logits, weights, *, beta: float, temperature: float):
    """(sum_tokens w JSD_beta, its gradient with respect to the student logits) in closed form.

    With z = logits / T, log p = log_softmax(z), M = beta p_t + (1 - beta) p_s, the gradient is
    dJ/dz_s = p_s * (g - sum_v p_s g) with g = dJ/dp_s = (1 - beta) (log p_s - log M) (interior beta),
    log p_s - log p_t (beta = 1: reverse KL), or -p_t / p_s (beta = 0: forward KL, where dJ/dz_s = p_s - p_t);
    dJ/ds = dJ/dz / T. Two exponentials and one logarithm per logit, instead of the many more autodiff of the
    log-space formula (`losses.generalized_jsd`, which this equals) runs. Logits `[..., vocab]` float32,
    weights `[...]`.
    """
    z_s, z_t = student_logits / temperature, teacher_logits / temperature
    e_s = jnp.exp(z_s - jnp.max(z_s, axis=-1, keepdims=True))
    e_t = jnp.exp(z_t - jnp.max(z_t, axis=-1, keepdims=True))
    sum_s, sum_t = jnp.sum(e_s, axis=-1, keepdims=True), jnp.sum(e_t, axis=-1, keepdims=True)
    p_s, p_t = e_s / sum_s, e_t / sum_t
    log_p_s = z_s - jnp.max(z_s, axis=-1, keepdims=True) - jnp.log(sum_s)
    log_p_t = z_t - jnp.max(z_t, axis=-1, keepdims=True) - jnp.log(sum_t)
    if beta == 0.0:
        per_token = jnp.sum(p_t * (log_p_t - log_p_s), axis=-1)
        d_z = p_s - p_t
    elif beta == 1.0:
        gap = log_p_s - log_p_t
        per_token = jnp.sum(p_s * gap, axis=-1)
        d_z = p_s * (gap - per_token[..., None])
    else:
        mixture = beta * p_t + (1.0 - beta) * p_s
        log_m = jnp.log(jnp.where(mixture > 0, mixture, 1.0))  # where M underflows, p_s = p_t = 0 weigh it out
        student_side = jnp.sum(p_s * (log_p_s - log_m), axis=-1)
        per_token = beta * jnp.sum(p_t * (log_p_t - log_m), axis=-1) + (1.0 - beta) * student_side
        d_z = (1.0 - beta) * p_s * ((log_p_s - log_m) - student_side[..., None])
    return jnp.sum(weights * per_token), d_z * (weights[..., None] / temperature)


def _make_fused(beta: float, temperature: float):
    """`fused(s_hidden, s_head, s_bias, t_hidden, t_head, t_bias, weights) -> (sum, count)` over chunks
    `[num_chunks, batch, c, ...]`, with the student-side gradient computed in the forward pass."""
    divergence = functools.partial(jsd_and_logit_gradient, beta=beta, temperature=temperature)

    def logits(s_head, s_bias, t_head, t_bias, s_hidden, t_hidden):
        teacher = jax.lax.stop_gradient(_head(t_hidden, t_head, t_bias))
        return _head(s_hidden, s_head, s_bias), teacher

    def primal(s_hidden, s_head, s_bias, t_hidden, t_head, t_bias, weights):
        def body(total, chunk):
            student, teacher = logits(s_head, s_bias, t_head, t_bias, *chunk[:2])
            return total + divergence(student, teacher, chunk[2])[0], None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (s_hidden, t_hidden, weights))
        return total, jnp.sum(weights)

    fused = jax.custom_vjp(primal)

    def forward(s_hidden, s_head, s_bias, t_hidden, t_head, t_bias, weights):
        def body(carry, chunk):
            total, d_head, d_bias = carry
            student, teacher = logits(s_head, s_bias, t_head, t_bias, *chunk[:2])
            value, d_logits = divergence(student, teacher, chunk[2])  # [batch, c, vocab] float32
            hidden = chunk[0]
            d_hidden = jnp.dot(d_logits.astype(hidden.dtype), s_head.T.astype(hidden.dtype))
            d_head = d_head + jnp.einsum(
                "bcd,bcv->dv", hidden, d_logits.astype(hidden.dtype), preferred_element_type=jnp.float32
            )
            return (total + value, d_head, d_bias + jnp.sum(d_logits, axis=(0, 1))), d_hidden

        init = (jnp.zeros((), jnp.float32), jnp.zeros(s_head.shape, jnp.float32), jnp.zeros_like(s_bias))
        (total, d_head, d_bias), d_hidden = jax.lax.scan(body, init, (s_hidden, t_hidden, weights))
        grads = (d_hidden, d_head.astype(s_head.dtype), d_bias)
        return (total, jnp.sum(weights)), (grads, t_hidden, t_head, t_bias, weights)

    def backward(residuals, cotangents):
        student_grads, *teacher_inputs = residuals
        scale = cotangents[0]  # the count gets no gradient
        d_hidden, d_head, d_bias = (scale.astype(g.dtype) * g for g in student_grads)
        d_teacher_hidden, d_teacher_head, d_teacher_bias, d_weights = (jnp.zeros_like(x) for x in teacher_inputs)
        return d_hidden, d_head, d_bias, d_teacher_hidden, d_teacher_head, d_teacher_bias, d_weights

    fused.defvjp(forward, backward)
    return fused


def chunked_jsd_at_positions(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    positions,
    *,
    mask=None,
    beta: float = 0.5,
    temperature: float = 1.0,
    student_bias=None,
    teacher_bias=None,
    chunk_size: int = 1024,
    reduction: str = "sum_count",
):
    """sum_{b, j: mask} JSD_beta(p_t || p_s) at hidden index `positions[b, j]` (Agarwal et al. 2024, GKD).

    p = softmax((hidden @ head + bias) / T) for both models, M = beta p_t + (1 - beta) p_s,
    JSD_beta = beta KL(p_t || M) + (1 - beta) KL(p_s || M); beta = 0 is KL(p_t || p_s) and beta = 1
    KL(p_s || p_t) exactly (`losses.generalized_jsd`, TRL's convention); no T^2. Equal, value and gradient, to
    `generalized_jsd` on the full logits gathered at `positions`. `chunk_size`: tokens per chunk (batch rows times
    positions); `reduction`: "sum_count" -> (sum, count), "sum", or "mean" (sum / count, 0 when none counts).
    """
    check_reduction(reduction)
    if reduction == "none":
        raise ValueError("reduction='none' would materialise per-token values; use 'mean', 'sum' or 'sum_count'")
    vocab = student_head.shape[-1]
    if teacher_head.shape[-1] != vocab:
        raise ValueError(
            f"student_head and teacher_head must share the vocab axis; got {vocab} and {teacher_head.shape[-1]}"
        )
    batch, count = positions.shape
    per_chunk = min(count, max(1, chunk_size // batch))
    num_chunks = -(-count // per_chunk)
    pad = num_chunks * per_chunk - count
    weights = jnp.ones((batch, count), jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)

    def chunks(x):  # [batch, count, ...] -> [num_chunks, batch, per_chunk, ...]; padding has weight 0
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(batch, num_chunks, per_chunk, *x.shape[2:]), 0, 1)

    def at_positions(hidden):
        return jnp.take_along_axis(hidden, positions[:, :, None].astype(jnp.int32), axis=1)

    zeros = jnp.zeros((vocab,), jnp.float32)
    s_bias = zeros if student_bias is None else student_bias.astype(jnp.float32)
    t_bias = zeros if teacher_bias is None else teacher_bias.astype(jnp.float32)
    fused = _make_fused(float(beta), float(temperature))
    total, valid = fused(
        chunks(at_positions(student_hidden)),
        student_head,
        s_bias,
        chunks(at_positions(teacher_hidden)),
        teacher_head,
        t_bias,
        chunks(weights),
    )
    if reduction == "sum_count":
        return total, valid
    if reduction == "sum":
        return total
    return jnp.where(valid > 0, total / jnp.maximum(valid, 1.0), 0.0)

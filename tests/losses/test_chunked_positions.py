"""`chunked_jsd_at_positions` equals a float64 numpy reference, value and gradients (hidden states, head, bias)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.losses import chunked_jsd_at_positions

BATCH, SEQ, D_S, D_T, VOCAB, K = 3, 11, 8, 12, 40, 5


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        student_hidden=rng.normal(size=(BATCH, SEQ, D_S)),
        teacher_hidden=rng.normal(size=(BATCH, SEQ, D_T)),
        student_head=0.5 * rng.normal(size=(D_S, VOCAB)),
        teacher_head=0.5 * rng.normal(size=(D_T, VOCAB)),
        student_bias=0.3 * rng.normal(size=VOCAB),
        teacher_bias=0.3 * rng.normal(size=VOCAB),
        positions=np.stack([rng.choice(SEQ, K, replace=False) for _ in range(BATCH)]),
        mask=rng.uniform(size=(BATCH, K)) > 0.3,
    )


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(p, beta, temperature):
    """(sum, count, d sum / d student hidden, d head, d bias) in float64 numpy, the gradient by hand:
    dJ/dz = p_s * (g - sum_v p_s g), z = s / T, with g = dJ/dp_s = (1 - beta) (log p_s - log M) for 0 < beta < 1,
    -p_t / p_s for beta = 0 (KL(p_t || p_s)) and log p_s - log p_t (+1, which cancels) for beta = 1."""
    rows = np.arange(BATCH)[:, None]
    hs, ht = p["student_hidden"][rows, p["positions"]], p["teacher_hidden"][rows, p["positions"]]
    z_s = (hs @ p["student_head"] + p["student_bias"]) / temperature
    z_t = (ht @ p["teacher_head"] + p["teacher_bias"]) / temperature
    log_ps, log_pt = _log_softmax(z_s), _log_softmax(z_t)
    ps, pt = np.exp(log_ps), np.exp(log_pt)
    if beta == 0:
        per_token, g = (pt * (log_pt - log_ps)).sum(-1), -pt / ps
    elif beta == 1:
        per_token, g = (ps * (log_ps - log_pt)).sum(-1), log_ps - log_pt
    else:
        log_m = np.log(beta * pt + (1 - beta) * ps)
        per_token = beta * (pt * (log_pt - log_m)).sum(-1) + (1 - beta) * (ps * (log_ps - log_m)).sum(-1)
        g = (1 - beta) * (log_ps - log_m)
    weights = p["mask"].astype(np.float64)
    d_logits = weights[..., None] * ps * (g - (ps * g).sum(-1, keepdims=True)) / temperature
    d_hidden = np.zeros_like(p["student_hidden"])
    np.add.at(d_hidden, (np.broadcast_to(rows, p["positions"].shape), p["positions"]), d_logits @ p["student_head"].T)
    d_head = np.einsum("bkd,bkv->dv", hs, d_logits)
    return (per_token * weights).sum(), weights.sum(), d_hidden, d_head, d_logits.sum((0, 1))


def _loss(p, beta, temperature, chunk_size):
    def total(student_hidden, student_head, student_bias):
        args = dict(p, student_hidden=student_hidden, student_head=student_head, student_bias=student_bias)
        hidden, head, positions = args.pop("student_hidden"), args.pop("student_head"), args.pop("positions")
        return chunked_jsd_at_positions(
            hidden,
            head,
            args.pop("teacher_hidden"),
            args.pop("teacher_head"),
            positions,
            beta=beta,
            temperature=temperature,
            chunk_size=chunk_size,
            **args,
        )

    return total


@pytest.mark.parametrize("beta, temperature", [(0.5, 1.0), (0.2, 2.0), (0.0, 1.0), (1.0, 0.7)])
@pytest.mark.parametrize("chunk_size", [4, 6, 1024])  # several chunks, a ragged last chunk, one chunk
def test_value_and_gradients_equal_the_numpy_reference(beta, temperature, chunk_size):
    p = {k: jnp.asarray(v, jnp.float32) if v.dtype == np.float64 else jnp.asarray(v) for k, v in _problem().items()}
    total_fn = _loss(p, beta, temperature, chunk_size)
    (total, count), pullback = jax.vjp(total_fn, p["student_hidden"], p["student_head"], p["student_bias"])
    d_hidden, d_head, d_bias = pullback((jnp.float32(1.0), jnp.float32(0.0)))
    expected = _reference(_problem(), beta, temperature)
    np.testing.assert_allclose(total, expected[0], rtol=1e-5)
    assert float(count) == expected[1]
    for got, want in zip((d_hidden, d_head, d_bias), expected[2:], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_gradient_scales_with_the_cotangent_and_mean_reduction():
    p = {k: jnp.asarray(v, jnp.float32) if v.dtype == np.float64 else jnp.asarray(v) for k, v in _problem(1).items()}
    total_fn = _loss(p, 0.5, 1.0, 6)

    def mean(hidden):
        total, count = total_fn(hidden, p["student_head"], p["student_bias"])
        return 3.0 * total / count

    expected = _reference(_problem(1), 0.5, 1.0)
    np.testing.assert_allclose(
        jax.grad(mean)(p["student_hidden"]), 3.0 * expected[2] / expected[1], rtol=2e-4, atol=1e-6
    )
    args = dict(p)
    hidden, head, positions = args.pop("student_hidden"), args.pop("student_head"), args.pop("positions")
    value = chunked_jsd_at_positions(
        hidden, head, args.pop("teacher_hidden"), args.pop("teacher_head"), positions, reduction="mean", **args
    )
    np.testing.assert_allclose(value, expected[0] / expected[1], rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_extreme_logits_stay_finite_and_match_autodiff_of_generalized_jsd(beta):
    from jdistill.losses import generalized_jsd
    from jdistill.losses.chunked_positions import jsd_and_logit_gradient

    keys = jax.random.split(jax.random.key(2), 3)
    student = 60.0 * jax.random.normal(keys[0], (4, 50))  # probabilities down to exp(-300): underflow to 0
    teacher = 60.0 * jax.random.normal(keys[1], (4, 50))
    weights = (jax.random.uniform(keys[2], (4,)) > 0.3).astype(jnp.float32)
    value, gradient = jsd_and_logit_gradient(student, teacher, weights, beta=beta, temperature=1.5)

    def dense(s):
        return generalized_jsd(s, teacher, beta=beta, temperature=1.5, mask=weights, reduction="sum")

    assert np.isfinite(value) and np.isfinite(gradient).all()
    np.testing.assert_allclose(value, dense(student), rtol=1e-5)
    # reverse KL at gaps of ~300 nats: float32 cancellation, ~1e-5 of the largest entries, on both sides
    np.testing.assert_allclose(gradient, jax.grad(dense)(student), rtol=1e-4, atol=2e-5)

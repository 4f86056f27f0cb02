"""Tests for jdistill.losses.sparse: numpy references, limiting cases, gradients, hypothesis."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses import generalized_jsd, topk_kd, uld_loss
from tests.losses.test_logits import (
    SHAPE,
    SLACK,
    logit_pairs,
    micro_batches,
    np_jsd,
    np_log_softmax,
    np_reduce,
    random_logits,
    random_mask,
    temperatures,
)

VOCAB = SHAPE[-1]

# --- float64 numpy references ---------------------------------------------------------------------


def np_topk_cache(teacher_logits, k, temperature=1.0):
    """The cache a teacher writes: its top-k log-probabilities at temperature T and their ids."""
    log_p = np_log_softmax(teacher_logits, temperature)
    ids = np.argsort(-log_p, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(log_p, ids, axis=-1), ids


def np_with_tail(topk_log_probs):
    return np.concatenate([topk_log_probs, np.log1p(-np.exp(topk_log_probs).sum(-1, keepdims=True))], axis=-1)


def np_topk_kd(s, cached_log_probs, ids, beta, temperature):
    student = np_with_tail(np.take_along_axis(np_log_softmax(s, temperature), ids, axis=-1))
    # np_jsd takes logits; normalised log-probabilities are their own log_softmax.
    return np_jsd(student, np_with_tail(cached_log_probs), 1.0, beta)


def np_uld(s, t, temperature):
    p_s, p_t = np.exp(np_log_softmax(s, temperature)), np.exp(np_log_softmax(t, temperature))
    size = max(p_s.shape[-1], p_t.shape[-1])

    def sorted_padded(p):
        return np.concatenate([-np.sort(-p, axis=-1), np.zeros(p.shape[:-1] + (size - p.shape[-1],))], axis=-1)

    return np.abs(sorted_padded(p_s) - sorted_padded(p_t)).sum(-1)


def cache(teacher_logits, k, temperature=1.0, dtype=np.float32):
    log_probs, ids = np_topk_cache(teacher_logits, k, temperature)
    return log_probs.astype(dtype), ids


# --- top-k KD (methods.md item 8) ------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("k, temperature", [(1, 1.0), (4, 2.0)])
def test_topk_kd_matches_numpy(beta, k, temperature):
    s, t = random_logits(seed=60)
    mask = random_mask("bool", seed=60)
    log_probs, ids = cache(t, k, temperature)
    expected = np_topk_kd(s, log_probs.astype(np.float64), ids, beta, temperature)
    for reduction in ("none", "mean"):
        got = topk_kd(s, log_probs, ids, beta=beta, temperature=temperature, mask=mask, reduction=reduction)
        np.testing.assert_allclose(got, np_reduce(expected, mask, reduction), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_topk_kd_with_k_equal_to_vocab_is_the_dense_loss(beta, temperature):
    s, t = random_logits(seed=61)
    mask = random_mask("bool", seed=61)
    got = topk_kd(s, *cache(t, VOCAB, temperature), beta=beta, temperature=temperature, mask=mask, reduction="none")
    dense = generalized_jsd(s, t, beta=beta, temperature=temperature, mask=mask, reduction="none")
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, VOCAB])
def test_topk_kd_is_zero_for_the_teacher_itself_and_positive_otherwise(k):
    s, t = random_logits(seed=62)
    assert np.all(np.abs(topk_kd(t, *cache(t, k, 2.0), temperature=2.0, reduction="none")) < 1e-6)
    assert np.all(topk_kd(s, *cache(t, k, 2.0), temperature=2.0, reduction="none") > 1e-4)


def test_topk_kd_does_not_depend_on_the_order_of_the_cache():
    s, t = random_logits(seed=63)
    log_probs, ids = cache(t, 4)
    order = np.random.default_rng(63).permutation(4)
    np.testing.assert_allclose(
        topk_kd(s, log_probs[..., order], ids[..., order]), topk_kd(s, log_probs, ids), rtol=1e-6
    )


def test_topk_kd_tail_stays_finite_when_the_cache_overshoots_one():
    # A bf16 cache can round its top-k mass above 1; the tail is clipped and everything stays finite.
    s, t = random_logits(seed=64)
    log_probs, ids = cache(t, VOCAB)
    value, grad = jax.jit(jax.value_and_grad(lambda s_: topk_kd(s_, log_probs + 1e-3, ids, beta=1.0)))(s)
    assert np.isfinite(value) and value >= 0 and np.all(np.isfinite(grad))


def test_topk_kd_accepts_a_bf16_cache():
    s, t = random_logits(seed=65)
    log_probs, ids = cache(t, 4)
    got = topk_kd(s, jnp.asarray(log_probs, jnp.bfloat16), ids)
    assert got.dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(log_probs, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(got, np_topk_kd(s, rounded, ids, 0.0, 1.0).mean(), rtol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, lp, ids: topk_kd(s, lp, ids[..., :3]), "same shape"),
        (lambda s, lp, ids: topk_kd(s[..., :3], lp, ids), r"k <= 3"),
        (lambda s, lp, ids: topk_kd(s, lp, ids, beta=-0.1), r"beta must be in \[0, 1\]"),
        (lambda s, lp, ids: topk_kd(s, lp, ids, reduction="batchmean"), "reduction must be one of"),
    ],
)
def test_topk_kd_invalid_arguments_raise_one_line_errors(call, message):
    s, t = random_logits(seed=66)
    with pytest.raises(ValueError, match=message):
        call(s, *cache(t, 4))


# --- ULD (methods.md item 11) ------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_vocab", [4, VOCAB, 17])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_matches_numpy_for_any_vocab_sizes(teacher_vocab, temperature):
    s, _ = random_logits(seed=67)
    t = 3.0 * np.random.default_rng(67).normal(size=SHAPE[:-1] + (teacher_vocab,)).astype(np.float32)
    mask = random_mask("bool", seed=67)
    for reduction in ("none", "mean"):
        got = uld_loss(s, t, temperature=temperature, mask=mask, reduction=reduction)
        np.testing.assert_allclose(got, np_reduce(np_uld(s, t, temperature), mask, reduction), rtol=2e-5, atol=2e-6)


def test_uld_is_invariant_to_permuting_either_vocabulary():
    s, _ = random_logits(seed=68)
    t = 3.0 * np.random.default_rng(68).normal(size=SHAPE[:-1] + (13,)).astype(np.float32)
    rng = np.random.default_rng(69)
    reference = uld_loss(s, t, reduction="none")
    np.testing.assert_allclose(uld_loss(s[..., rng.permutation(VOCAB)], t, reduction="none"), reference, rtol=1e-5)
    np.testing.assert_allclose(uld_loss(s, t[..., rng.permutation(13)], reduction="none"), reference, rtol=1e-5)


def test_uld_is_zero_when_distributions_match_up_to_relabelling_and_padding():
    s, t = random_logits(seed=70)
    assert np.all(np.abs(uld_loss(s, s[..., ::-1], reduction="none")) < 1e-6)
    # Extra teacher tokens with zero probability are the zero padding.
    padded = np.concatenate([s, np.full(SHAPE[:-1] + (3,), -1e30, np.float32)], axis=-1)
    assert np.all(np.abs(uld_loss(s, padded, reduction="none")) < 1e-6)
    assert np.all(uld_loss(s, t, reduction="none") > 1e-4)


def test_uld_is_symmetric_and_at_most_two():
    s, t = random_logits(seed=71, scale=30.0)
    np.testing.assert_allclose(uld_loss(s, t, reduction="none"), uld_loss(t, s, reduction="none"), rtol=1e-6)
    assert np.all(uld_loss(s, t, reduction="none") <= 2.0 + 1e-6)


def test_uld_rejects_mismatched_leading_shapes():
    s, t = random_logits(seed=72)
    with pytest.raises(ValueError, match="leading shape"):
        uld_loss(s, t[:2])


# --- gradients, reductions -------------------------------------------------------------------------


# The beta = 0 and beta = 1 ends reuse the gather and tail-bucket path checked here, and logits.py's KL.
@pytest.mark.parametrize("name", ["topk_kd", "uld"])
def test_gradients_match_finite_differences(name):
    s, t = random_logits(seed=73)
    mask = random_mask("bool", seed=73)
    log_probs, ids = cache(t, 4, 1.5, np.float64)
    loss = {
        "topk_kd": lambda s_, t_: topk_kd(s_, log_probs, ids, beta=0.3, temperature=1.5, mask=mask),
        "uld": lambda s_, t_: uld_loss(s_, t_[..., :7], temperature=1.5, mask=mask),
    }[name]
    with jax.enable_x64(True):
        args = (jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64))
        check_grads(jax.jit(loss), args, order=1, modes=("rev",))


@pytest.mark.parametrize("name", ["topk_kd", "uld"])
def test_sum_count_over_micro_batches_equals_full_batch_mean(name):
    s, t = random_logits(seed=74)
    mask = random_mask("bool", seed=74)
    mask[1] = False  # one micro-batch with no valid position
    log_probs, ids = cache(t, 3)
    if name == "topk_kd":
        loss, teacher = (lambda s_, lp, i, **kw: topk_kd(s_, lp, i, beta=0.5, **kw)), (log_probs, ids)
    else:
        loss, teacher = (lambda s_, t_, _, **kw: uld_loss(s_, t_, **kw)), (t, t)
    jitted = jax.jit(functools.partial(loss, reduction="sum_count"))
    pieces = [jitted(*args[:3], mask=args[3]) for args in micro_batches(s, *teacher, mask)]
    accumulated = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(accumulated, loss(s, *teacher, mask=mask), rtol=1e-5)


def test_jit_with_traced_arguments_and_vmap_agree_with_eager():
    s, t = random_logits(seed=75)
    mask = random_mask("bool", seed=75)
    log_probs, ids = cache(t, 3, 2.0)
    eager_topk = topk_kd(s, log_probs, ids, beta=0.5, temperature=2.0, mask=mask, reduction="none")
    eager_uld = uld_loss(s, t, temperature=2.0, mask=mask, reduction="none")

    @jax.jit
    def jitted(beta, temperature):
        return (
            topk_kd(s, log_probs, ids, beta=beta, temperature=temperature, mask=mask, reduction="none"),
            uld_loss(s, t, temperature=temperature, mask=mask, reduction="none"),
        )

    @jax.jit
    @jax.vmap
    def per_row(s_, lp, i, t_, m):
        return (
            topk_kd(s_, lp, i, beta=0.5, temperature=2.0, mask=m, reduction="sum"),
            uld_loss(s_, t_, temperature=2.0, mask=m, reduction="sum"),
        )

    for got, eager in zip(jitted(0.5, 2.0), (eager_topk, eager_uld), strict=True):
        np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-7)
    for got, eager in zip(per_row(s, log_probs, ids, t, mask), (eager_topk, eager_uld), strict=True):
        np.testing.assert_allclose(got, np.asarray(eager).sum(-1), rtol=1e-5, atol=1e-6)


def test_all_masked_input_gives_zero_losses_and_finite_gradients():
    s, t = random_logits(seed=76)
    mask = random_mask("all_masked", seed=76)
    log_probs, ids = cache(t, 3)
    losses = {
        "topk_kd": lambda s_: topk_kd(s_, log_probs, ids, beta=0.5, mask=mask),
        "uld": lambda s_: uld_loss(s_, t, mask=mask),
    }
    values_and_grads = jax.jit(lambda s_: {name: jax.value_and_grad(fn)(s_) for name, fn in losses.items()})(s)
    for name, (value, grad) in values_and_grads.items():
        assert value == 0.0 and np.all(np.isfinite(grad)), name


# --- hypothesis --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="k")
def sparse_objectives(s, t, mask, beta, temperature, k):
    # The cache is written at temperature T from the teacher logits (in float32: a bf16 cache is tested above).
    cached, ids = jax.lax.top_k(jax.nn.log_softmax(t.astype(jnp.float32) / temperature), k)
    cached = jax.lax.stop_gradient(cached)

    def values(s_, t_):
        return {
            "topk_kd": topk_kd(s_, cached, ids, beta=beta, temperature=temperature, mask=mask),
            "uld": uld_loss(s_, t_, temperature=temperature, mask=mask),
        }

    # A sum of finite gradients is finite and a NaN or inf in any one of them spoils it: one backward
    # pass, through the student (the side that trains).
    grads = jax.grad(lambda s_: sum(values(s_, t).values()))(s)
    return values(s, t), grads


@settings(max_examples=30, deadline=None)
@given(pair=logit_pairs(), temperature=temperatures, beta=st.sampled_from([0.0, 0.5, 1.0]).map(jnp.float32))
def test_sparse_objectives_are_finite_nonnegative_and_zero_on_equal_inputs(pair, temperature, beta):
    s, t, mask = pair
    mask = np.ones(s.shape[:-1], bool) if mask is None else mask  # one program for both kinds of mask
    # One k per shape keeps compilations few: k < vocab for vocab 5, k = vocab for vocab 1.
    values, grads = sparse_objectives(s, t, mask, beta, temperature, min(2, s.shape[-1]))
    for name, value in values.items():
        assert np.isfinite(value) and value >= -SLACK, name
    assert np.all(np.isfinite(np.asarray(grads, np.float32)))
    if np.array_equal(s, t):
        assert abs(float(values["topk_kd"])) <= SLACK and abs(float(values["uld"])) <= SLACK

"""Tests for jdistill.losses.logits: numpy references, limiting cases, gradients, hypothesis."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jdistill.losses import cross_entropy, forward_kl, generalized_jsd, kd, reverse_kl, tvd

# --- float64 numpy references ---------------------------------------------------------------------


def np_log_softmax(logits, temperature=1.0):
    x = np.asarray(logits, dtype=np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_kl(log_p, log_q):
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def np_forward_kl(s, t, temperature):
    return np_kl(np_log_softmax(t, temperature), np_log_softmax(s, temperature))


def np_reverse_kl(s, t, temperature):
    return np_kl(np_log_softmax(s, temperature), np_log_softmax(t, temperature))


def np_tvd(s, t, temperature):
    p_s, p_t = np.exp(np_log_softmax(s, temperature)), np.exp(np_log_softmax(t, temperature))
    return 0.5 * np.abs(p_t - p_s).sum(axis=-1)


def np_jsd(s, t, temperature, beta):
    if beta == 0:
        return np_forward_kl(s, t, temperature)
    if beta == 1:
        return np_reverse_kl(s, t, temperature)
    log_ps, log_pt = np_log_softmax(s, temperature), np_log_softmax(t, temperature)
    log_m = np.log(beta * np.exp(log_pt) + (1 - beta) * np.exp(log_ps))
    return beta * np_kl(log_pt, log_m) + (1 - beta) * np_kl(log_ps, log_m)


def np_cross_entropy(logits, labels, label_smoothing=0.0):
    log_p = np_log_softmax(logits)
    nll = -np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    return (1 - label_smoothing) * nll - label_smoothing * log_p.mean(axis=-1)


def np_kd(s, t, temperature):
    return temperature**2 * np_forward_kl(s, t, temperature)


def np_reduce(per_token, mask, reduction):
    valid = np.ones(per_token.shape, bool) if mask is None else np.broadcast_to(mask != 0, per_token.shape)
    if reduction == "none":
        return np.where(valid, per_token, 0.0)
    if reduction == "sum":
        return per_token[valid].sum()
    return per_token[valid].sum() / max(valid.sum(), 1)


# name -> (jdistill function taking (s, t, **kw), float64 reference taking (s, t, temperature))
DIVERGENCES = {
    "forward_kl": (forward_kl, np_forward_kl),
    "reverse_kl": (reverse_kl, np_reverse_kl),
    "tvd": (tvd, np_tvd),
    "jsd_0.1": (functools.partial(generalized_jsd, beta=0.1), functools.partial(np_jsd, beta=0.1)),
    "jsd_0.5": (functools.partial(generalized_jsd, beta=0.5), functools.partial(np_jsd, beta=0.5)),
    "jsd_0.9": (functools.partial(generalized_jsd, beta=0.9), functools.partial(np_jsd, beta=0.9)),
    "kd": (functools.partial(kd, labels=None), np_kd),
}
# One of each family, for the slower per-function tests (the JSD with an asymmetric beta).
CORE = ["forward_kl", "reverse_kl", "tvd", "jsd_0.1", "kd"]
CORE_FNS = [DIVERGENCES[name][0] for name in CORE]


# One shape for most tests: every distinct shape costs XLA compilations, which dominate the runtime.
SHAPE = (4, 6, 10)
BATCH = SHAPE[:-1]


def random_logits(seed, shape=SHAPE, scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype(np.float32), (scale * rng.normal(size=shape)).astype(np.float32)


def random_mask(kind, seed, batch_shape=BATCH):
    if kind == "none":
        return None
    mask = np.random.default_rng(seed + 1).random(batch_shape) < 0.6
    if kind == "all_masked":
        mask[...] = False
    return mask.astype(np.float32) if kind == "float" else mask


def random_labels(seed, batch_shape=BATCH, vocab=SHAPE[-1]):
    return np.random.default_rng(seed + 2).integers(0, vocab, size=batch_shape)


# --- numpy references --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("shape", [SHAPE[-1:], SHAPE[-2:], SHAPE])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_divergence_matches_numpy_per_position(name, shape, temperature):
    fn, reference = DIVERGENCES[name]
    s, t = random_logits(seed=len(shape), shape=shape)
    mask = random_mask("bool", seed=1, batch_shape=shape[:-1])
    expected = np_reduce(reference(s, t, temperature), mask, "none")
    got = fn(s, t, temperature=temperature, mask=mask, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "all_masked"])
def test_divergence_mask_kinds_match_numpy(mask_kind):
    s, t = random_logits(seed=3)
    mask = random_mask(mask_kind, seed=3)
    for name, (fn, reference) in DIVERGENCES.items():
        for reduction in ("mean", "sum"):
            expected = np_reduce(reference(s, t, 2.0), mask, reduction)
            got = fn(s, t, temperature=2.0, mask=mask, reduction=reduction)
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6, err_msg=f"{name} {reduction}")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy(label_smoothing):
    logits, _ = random_logits(seed=5)
    labels, mask = random_labels(seed=5), random_mask("bool", seed=5)
    for reduction in ("none", "mean"):
        expected = np_reduce(np_cross_entropy(logits, labels, label_smoothing), mask, reduction)
        got = cross_entropy(logits, labels, mask=mask, label_smoothing=label_smoothing, reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def test_cross_entropy_clips_ignore_index_at_masked_positions():
    logits, _ = random_logits(seed=6)
    labels = random_labels(seed=6)
    labels[:, -2:] = -100
    mask = labels >= 0
    expected = np_reduce(np_cross_entropy(logits, np.maximum(labels, 0)), mask, "mean")
    np.testing.assert_allclose(cross_entropy(logits, labels, mask=mask), expected, rtol=2e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("scale", [True, False])
def test_kd_matches_numpy_with_label_term(temperature, scale):
    s, t = random_logits(seed=7)
    labels, mask = random_labels(seed=7), random_mask("bool", seed=7)
    factor = temperature**2 if scale else 1.0
    per_token = 0.7 * factor * np_forward_kl(s, t, temperature) + 0.3 * np_cross_entropy(s, labels)
    got = kd(
        s,
        t,
        labels,
        temperature=temperature,
        distill_weight=0.7,
        label_weight=0.3,
        mask=mask,
        scale_by_temperature_squared=scale,
    )
    np.testing.assert_allclose(got, np_reduce(per_token, mask, "mean"), rtol=2e-5)


# --- limiting cases (methods.md items 1 and 7) -------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0])
def test_kd_is_zero_when_student_equals_teacher(temperature):
    s, _ = random_logits(seed=8)
    assert abs(float(kd(s, s, None, temperature=temperature))) < 1e-6


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_gradient_is_temperature_times_prob_difference(temperature):
    s, t = random_logits(seed=9)
    grad = jax.grad(lambda s_: kd(s_, t, None, temperature=temperature, reduction="sum"))(jnp.asarray(s))
    p_s, p_t = np.exp(np_log_softmax(s, temperature)), np.exp(np_log_softmax(t, temperature))
    np.testing.assert_allclose(grad, temperature * (p_s - p_t), atol=1e-5)


def test_kd_at_large_temperature_approaches_squared_logit_gap():
    s, t = random_logits(seed=10, scale=1.0)
    s, t = s - s.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
    with jax.enable_x64(True):
        got = kd(jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64), None, temperature=1e3, reduction="sum")
    expected = np.sum((s.astype(np.float64) - t) ** 2) / (2 * s.shape[-1])
    np.testing.assert_allclose(got, expected, rtol=1e-2)


def test_kd_without_temperature_scaling_is_forward_kl():
    s, t = random_logits(seed=11)
    unscaled = kd(s, t, None, temperature=3.0, scale_by_temperature_squared=False)
    np.testing.assert_allclose(unscaled, forward_kl(s, t, temperature=3.0), rtol=1e-6)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t = random_logits(seed=12)
    np.testing.assert_array_equal(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    np.testing.assert_array_equal(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))


def test_jsd_endpoints_hold_for_traced_beta_under_jit():
    s, t = random_logits(seed=13)
    jitted = jax.jit(lambda s_, t_, beta: generalized_jsd(s_, t_, beta=beta, temperature=2.0))
    for beta, expected in [
        (0.0, forward_kl(s, t, temperature=2.0)),
        (1.0, reverse_kl(s, t, temperature=2.0)),
        (0.3, generalized_jsd(s, t, beta=0.3, temperature=2.0)),
    ]:
        np.testing.assert_allclose(jitted(s, t, jnp.float32(beta)), expected, rtol=1e-6)


def test_jsd_is_symmetric_at_half():
    s, t = random_logits(seed=14)
    np.testing.assert_allclose(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5), rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_jsd_is_zero_iff_distributions_match(beta):
    s, t = random_logits(seed=15)
    shifted = s + 3.0  # same distribution, different logits
    assert np.all(np.abs(generalized_jsd(s, shifted, beta=beta, reduction="none")) < 1e-6)
    assert np.all(generalized_jsd(s, t, beta=beta, reduction="none") > 1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalised_jsd_is_continuous_at_both_ends(dtype):
    # The gap to the limit is O(beta * max p_t / p_s), so the logits are mild; float32 cancellation
    # grows like 1 / beta, so float32 stops at beta = 1e-3.
    s, t = random_logits(seed=16, scale=1.0)
    beta, rtol = (1e-3, 1e-2) if dtype == np.float32 else (1e-6, 1e-4)
    with jax.enable_x64(dtype == np.float64):
        s, t = jnp.asarray(s, dtype), jnp.asarray(t, dtype)
        norm = beta * (1 - beta)
        near_zero = generalized_jsd(s, t, beta=beta, reduction="none") / norm
        near_one = generalized_jsd(s, t, beta=1 - beta, reduction="none") / norm
        np.testing.assert_allclose(near_zero, forward_kl(s, t, reduction="none"), rtol=rtol)
        np.testing.assert_allclose(near_one, reverse_kl(s, t, reduction="none"), rtol=rtol)


# --- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORE)
def test_gradients_match_finite_differences(name):
    fn, _ = DIVERGENCES[name]
    s, t = random_logits(seed=17)
    with jax.enable_x64(True):
        loss = functools.partial(fn, temperature=1.5, mask=random_mask("bool", seed=17))
        check_grads(loss, (jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64)), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_gradients_match_finite_differences(label_smoothing):
    logits, _ = random_logits(seed=18)
    with jax.enable_x64(True):
        loss = functools.partial(cross_entropy, labels=random_labels(seed=18), label_smoothing=label_smoothing)
        check_grads(loss, (jnp.asarray(logits, jnp.float64),), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_gradients_are_finite_at_traced_endpoints(beta):
    s, t = random_logits(seed=19)
    grads = jax.jit(jax.grad(lambda s_, b: generalized_jsd(s_, t, beta=b), argnums=(0, 1)))(s, jnp.float32(beta))
    assert all(np.all(np.isfinite(g)) for g in grads)
    expected_kl = forward_kl if beta == 0.0 else reverse_kl
    np.testing.assert_allclose(grads[0], jax.grad(lambda s_: expected_kl(s_, t))(s), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", CORE)
def test_all_masked_input_gives_zero_loss_and_finite_gradients(name):
    fn, _ = DIVERGENCES[name]
    s, t = random_logits(seed=20)
    value, grad = jax.value_and_grad(lambda s_: fn(s_, t, mask=random_mask("all_masked", seed=20)))(jnp.asarray(s))
    assert value == 0.0 and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", CORE)
def test_extreme_logits_give_finite_values_and_gradients(name):
    fn, _ = DIVERGENCES[name]
    s = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    value, grads = jax.value_and_grad(lambda s_, t_: fn(s_, t_, temperature=0.5), argnums=(0, 1))(s, t)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_forward_kl_at_extreme_logits_is_exact():
    s = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    np.testing.assert_allclose(forward_kl(s, t, reduction="none"), [2e4, 0.0], rtol=1e-6)


@pytest.mark.parametrize("name", CORE)
def test_bf16_logits_are_upcast_to_float32(name):
    fn, _ = DIVERGENCES[name]
    s, t = (jnp.asarray(x, jnp.bfloat16) for x in random_logits(seed=21))
    got = fn(s, t)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(s.astype(jnp.float32), t.astype(jnp.float32)), rtol=1e-6)


# --- reductions, jit, vmap, errors ----------------------------------------------------------------


def micro_batches(*arrays, count=4):
    return zip(*(np.split(x, count) for x in arrays), strict=True)


@pytest.mark.parametrize("name", CORE)
def test_sum_count_over_micro_batches_equals_full_batch_mean(name):
    fn, _ = DIVERGENCES[name]
    s, t = random_logits(seed=22)
    mask = random_mask("bool", seed=22)
    mask[1] = False  # one micro-batch with no valid position
    pieces = [fn(s_, t_, mask=m_, reduction="sum_count") for s_, t_, m_ in micro_batches(s, t, mask)]
    accumulated = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(accumulated, fn(s, t, mask=mask), rtol=1e-5)


def test_kd_sum_count_with_labels_equals_mean():
    s, t = random_logits(seed=23)
    labels, mask = random_labels(seed=23), random_mask("bool", seed=23)
    loss = functools.partial(kd, temperature=2.0, distill_weight=0.6, label_weight=0.4)
    pieces = [loss(s_, t_, y_, mask=m_, reduction="sum_count") for s_, t_, y_, m_ in micro_batches(s, t, labels, mask)]
    accumulated = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(accumulated, loss(s, t, labels, mask=mask), rtol=1e-5)


@pytest.mark.parametrize("name", CORE)
def test_jit_and_vmap_agree_with_eager(name):
    fn, _ = DIVERGENCES[name]
    s, t = random_logits(seed=24)
    mask = random_mask("bool", seed=24)
    eager = fn(s, t, temperature=2.0, mask=mask, reduction="none")
    jitted = jax.jit(lambda *a: fn(*a[:2], temperature=a[2], mask=a[3], reduction="none"))(s, t, 2.0, mask)
    per_row = jax.vmap(lambda *a: fn(*a[:2], temperature=2.0, mask=a[2], reduction="sum"))(s, t, mask)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(per_row, np.asarray(eager).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CORE)
def test_bad_reduction_raises(name):
    s, t = random_logits(seed=25)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DIVERGENCES[name][0](s, t, reduction="batchmean")


def test_cross_entropy_bad_reduction_raises():
    logits, _ = random_logits(seed=25)
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(logits, random_labels(seed=25), reduction="batchmean")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, t: forward_kl(s, t, temperature=0.0), "temperature must be > 0"),
        (lambda s, t: generalized_jsd(s, t, beta=1.5), r"beta must be in \[0, 1\]"),
        (lambda s, t: reverse_kl(s, t[..., :4]), "vocab"),
        (lambda s, t: kd(s, t, None, label_weight=0.5), "labels"),
    ],
)
def test_invalid_arguments_raise_one_line_errors(call, message):
    s, t = random_logits(seed=26)
    with pytest.raises(ValueError, match=message):
        call(s, t)


# --- hypothesis --------------------------------------------------------------------------------------
# One jitted program evaluates every core objective, so examples of the same shape share a compilation.

# float32 rounding can make a divergence of near-equal distributions slightly negative; kd's T^2 scales it.
SLACK = 1e-6
logit_values = st.one_of(
    st.floats(-10.0, 10.0, width=32), st.floats(-1e4, 1e4, width=32), st.sampled_from([-1e4, 1e4, 0.0])
)


@jax.jit
def core_values(s, t, mask, temperature):
    return {
        (name, reduction): fn(s, t, temperature=temperature, mask=mask, reduction=reduction)
        for name, fn in zip(CORE, CORE_FNS, strict=True)
        for reduction in ("mean", "none")
    }


@jax.jit
def core_gradients(s, t, mask, temperature):
    return {
        name: jax.grad(lambda s_, t_, fn=fn: fn(s_, t_, temperature=temperature, mask=mask), argnums=(0, 1))(s, t)
        for name, fn in zip(CORE, CORE_FNS, strict=True)
    }


@jax.jit
def jsd_traced_beta(s, t, mask, beta, temperature):
    return generalized_jsd(s, t, beta=beta, temperature=temperature, mask=mask, reduction="none")


@st.composite
def logit_pairs(draw):
    """Student/teacher logits `[..., vocab]` (possibly bf16, possibly extreme, possibly equal) and a mask."""
    shape = draw(st.sampled_from([(5,), (2, 3, 1), (2, 3, 5)]))
    batch_shape = shape[:-1]
    dtype = draw(st.sampled_from([np.float32, jnp.bfloat16]))
    s = draw(hnp.arrays(np.float32, shape, elements=logit_values))
    relation = draw(st.sampled_from(["equal", "near", "independent"]))
    if relation == "equal":
        t = s.copy()
    elif relation == "near":  # near-equal distributions: the divergence is all rounding error
        t = s + draw(hnp.arrays(np.float32, shape, elements=st.floats(-0.01, 0.01).map(np.float32)))
    else:
        t = draw(hnp.arrays(np.float32, shape, elements=logit_values))
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, batch_shape)))  # includes fully masked
    return jnp.asarray(s, dtype), jnp.asarray(t, dtype), mask


temperatures = st.sampled_from([0.5, 1.0, 4.0, 10.0]).map(jnp.float32)


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs(), temperature=temperatures)
def test_divergences_are_finite_nonnegative_and_zero_on_equal_inputs(pair, temperature):
    s, t, mask = pair
    for (name, reduction), value in core_values(s, t, mask, temperature).items():
        value, slack = np.asarray(value), SLACK * (float(temperature) ** 2 if name == "kd" else 1.0)
        assert np.all(np.isfinite(value)), (name, reduction)
        assert np.all(value >= -slack), (name, reduction)
        if np.array_equal(s, t):
            assert np.all(np.abs(value) <= slack), (name, reduction)


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs(), beta=st.floats(0.0, 1.0), temperature=temperatures)
def test_generalized_jsd_is_finite_and_nonnegative_for_any_beta(pair, beta, temperature):
    s, t, mask = pair
    value = np.asarray(jsd_traced_beta(s, t, mask, jnp.float32(beta), temperature))
    assert np.all(np.isfinite(value)) and np.all(value >= -SLACK)


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs(), temperature=temperatures)
def test_divergence_gradients_are_finite(pair, temperature):
    s, t, mask = pair
    for name, grads in core_gradients(s, t, mask, temperature).items():
        assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads), name

"""Tests for jdistill.losses.quantize: min-max bucket quantisation, straight-through gradient, KD loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses.quantize import quantize, quantize_ste, quantize_tree_ste, quantized_distillation_loss

# --- float64 numpy references ---------------------------------------------------------------------


def np_quantize(w, bits, bucket_size=None):
    flat = np.asarray(w, np.float64).ravel()
    size = flat.size if bucket_size is None else bucket_size
    out = np.empty_like(flat)
    for start in range(0, flat.size, size):
        bucket = flat[start : start + size]
        low, span = bucket.min(), bucket.max() - bucket.min()
        steps = 2**bits - 1
        quantized = np.round((bucket - low) / span * steps) / steps * span + low if span > 0 else bucket
        out[start : start + size] = quantized
    return out.reshape(np.shape(w))


def np_log_softmax(x, temperature=1.0):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def random_weights(seed, shape=(6, 10)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- quantisation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("bucket_size", [None, 7, 16])
def test_quantize_matches_numpy(bits, bucket_size):
    w = random_weights(seed=bits)
    got = quantize(w, bits=bits, bucket_size=bucket_size)
    assert got.shape == w.shape and got.dtype == w.dtype
    np.testing.assert_allclose(got, np_quantize(w, bits, bucket_size), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("bucket_size", [None, 7])
def test_quantize_uses_at_most_two_to_the_bits_levels_per_bucket(bits, bucket_size):
    w = random_weights(seed=10 + bits)
    flat = np.asarray(quantize(w, bits=bits, bucket_size=bucket_size)).ravel()
    size = flat.size if bucket_size is None else bucket_size
    for start in range(0, flat.size, size):
        bucket, original = flat[start : start + size], w.ravel()[start : start + size]
        assert len(np.unique(bucket)) <= 2**bits
        # Min and max of each bucket are levels themselves.
        np.testing.assert_allclose([bucket.min(), bucket.max()], [original.min(), original.max()], rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("bucket_size", [None, 16])
def test_quantize_is_idempotent(bits, bucket_size):
    once = quantize(random_weights(seed=20 + bits), bits=bits, bucket_size=bucket_size)
    twice = quantize(once, bits=bits, bucket_size=bucket_size)
    np.testing.assert_allclose(twice, once, rtol=0, atol=1e-6)


def test_quantize_at_32_bits_is_the_identity():
    w = random_weights(seed=30)
    np.testing.assert_allclose(quantize(w, bits=32), w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(quantize(w, bits=32, bucket_size=16), w, rtol=0, atol=1e-6)
    with jax.enable_x64(True):
        w64 = np.random.default_rng(30).normal(size=(64,))
        np.testing.assert_allclose(jax.jit(quantize, static_argnums=1)(jnp.asarray(w64), 32), w64, rtol=0, atol=1e-9)


def test_quantize_error_is_at_most_half_a_step():
    w = random_weights(seed=31)
    bits = 3
    step = (w.max() - w.min()) / (2**bits - 1)
    assert np.max(np.abs(np.asarray(quantize(w, bits)) - w)) <= 0.5 * step + 1e-6


def test_quantize_leaves_constant_buckets_unchanged_and_keeps_bf16():
    w = np.full((3, 4), 0.37, np.float32)
    np.testing.assert_array_equal(quantize(w, 2), w)
    np.testing.assert_array_equal(quantize(np.zeros(0, np.float32), 4), np.zeros(0))
    bf16 = jnp.asarray(random_weights(seed=32), jnp.bfloat16)
    assert quantize(bf16, 4).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bits=0), "bits must be"),
        (dict(bits=33), "bits must be"),
        (dict(bits=4.0), "bits must be"),
        (dict(bits=4, bucket_size=0), "bucket_size must be"),
    ],
)
def test_quantize_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(random_weights(seed=33), **kwargs)


# --- straight-through estimator ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 4])
def test_quantize_ste_has_quantized_value_and_identity_gradient(bits):
    w = random_weights(seed=40)
    np.testing.assert_allclose(quantize_ste(w, bits, 16), quantize(w, bits, bucket_size=16), rtol=1e-6, atol=1e-7)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(quantize_ste(x, bits, 16))))(w)
    np.testing.assert_array_equal(grad, np.ones_like(w))


def test_quantize_ste_chain_rule_evaluates_at_quantized_weights():
    # d/dw sum(Q(w) * x) under STE is x; d/dw sum(Q(w)^2) is 2 Q(w), the gradient taken at Q(w).
    w = random_weights(seed=41)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(quantize_ste(x, 2) ** 2)))(w)
    np.testing.assert_allclose(grad, 2 * np.asarray(quantize(w, 2)), rtol=1e-6)


def test_quantize_tree_ste_skips_integer_leaves():
    params = {"w": random_weights(seed=42), "step": np.int32(3)}
    out = quantize_tree_ste(params, 2)
    assert out["step"] == 3
    np.testing.assert_allclose(out["w"], quantize(params["w"], 2), rtol=1e-6)


# --- distillation loss --------------------------------------------------------------------------------


def random_logits(seed, shape=(4, 6, 10)):
    rng = np.random.default_rng(seed)
    s, t = (3 * rng.normal(size=shape)).astype(np.float32), (3 * rng.normal(size=shape)).astype(np.float32)
    return s, t, rng.integers(0, shape[-1], size=shape[:-1]), rng.random(shape[:-1]) < 0.6


def test_quantized_distillation_loss_matches_paper_defaults():
    s, t, labels, mask = random_logits(seed=50)
    log_ps, log_pt = np_log_softmax(s, 2.0), np_log_softmax(t, 2.0)
    kl = np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1)
    ce = -np.take_along_axis(np_log_softmax(s), labels[..., None], axis=-1)[..., 0]
    per_token = 0.7 * 4.0 * kl + 0.3 * ce
    loss = jax.jit(quantized_distillation_loss)
    np.testing.assert_allclose(loss(s, t, labels), per_token.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss(s, t, labels, mask=mask), per_token[mask].mean(), rtol=1e-5)


def test_quantized_distillation_loss_gradients_match_finite_differences():
    s, t, labels, mask = random_logits(seed=51)
    with jax.enable_x64(True):
        loss = jax.jit(functools.partial(quantized_distillation_loss, labels=labels, mask=mask))
        check_grads(loss, (jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64)), order=1, modes=("rev",))


# --- hypothesis -----------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    size=st.sampled_from([1, 5, 33]),
    scale=st.sampled_from([1e-30, 1.0, 1e30]),
    bits=st.sampled_from([2, 8]),
    seed=st.integers(0, 2**16),
)
def test_quantize_is_finite_bounded_and_idempotent_on_random_inputs(size, scale, bits, seed):
    w = (scale * np.random.default_rng(seed).normal(size=size)).astype(np.float32)
    once = np.asarray(quantize(w, bits=bits, bucket_size=4))
    assert np.all(np.isfinite(once))
    for start in range(0, size, 4):
        bucket, original = once[start : start + 4], w[start : start + 4]
        slack = 1e-6 * np.abs(original).max()
        assert original.min() - slack <= bucket.min() and bucket.max() <= original.max() + slack
        assert len(np.unique(bucket)) <= 2**bits
    twice = np.asarray(quantize(once, bits=bits, bucket_size=4))
    np.testing.assert_allclose(twice, once, rtol=1e-5, atol=1e-6 * scale)

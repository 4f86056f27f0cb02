"""RMSNorm (plain and zero-centred) and the gated RMSNorm, against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.nn.norms import GatedRMSNorm, RMSNorm


def _numpy_rmsnorm(x, weight, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


@jax.jit
def _rmsnorm_forward(x, weight):
    norm = RMSNorm(x.shape[-1], eps=1e-5)
    norm.scale[...] = weight
    return norm(x)


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(1, 12), rows=st.integers(1, 4))
def test_rmsnorm_matches_numpy(dim, rows):
    rng = np.random.default_rng(dim * 7 + rows)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    weight = rng.normal(size=(dim,)).astype(np.float32)
    np.testing.assert_allclose(_rmsnorm_forward(x, weight), _numpy_rmsnorm(x, weight, 1e-5), rtol=1e-5, atol=1e-6)


def test_rmsnorm_defaults_and_dtype():
    norm = RMSNorm(6)
    assert norm.eps == 1e-6
    np.testing.assert_array_equal(norm.scale[...], np.ones(6))
    x = jax.random.normal(jax.random.key(0), (2, 6)).astype(jnp.bfloat16)
    assert norm(x).dtype == jnp.bfloat16


def test_zero_centered_with_zero_weight_equals_plain_with_unit_weight():
    centered = RMSNorm(8, eps=1e-6, zero_centered=True)
    plain = RMSNorm(8, eps=1e-6)
    np.testing.assert_array_equal(centered.scale[...], np.zeros(8))
    x = jax.random.normal(jax.random.key(1), (3, 5, 8))
    np.testing.assert_array_equal(centered(x), plain(x))


def test_zero_centered_multiplies_by_one_plus_w():
    weight = np.linspace(-0.5, 0.5, 8).astype(np.float32)
    centered = RMSNorm(8, zero_centered=True)
    centered.scale[...] = jnp.asarray(weight)
    x = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(centered(jnp.asarray(x)), _numpy_rmsnorm(x, 1 + weight, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gated_rmsnorm_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 16)).astype(np.float32)
    gate = rng.normal(size=(2, 3, 4, 16)).astype(np.float32)
    norm = GatedRMSNorm(16, eps=1e-6)
    np.testing.assert_array_equal(norm.scale[...], np.ones(16))
    weight = rng.normal(size=(16,)).astype(np.float32)
    norm.scale[...] = jnp.asarray(weight)
    x_in, gate_in = jnp.asarray(x, dtype), jnp.asarray(gate, dtype)
    x64, gate64 = np.asarray(x_in, np.float64), np.asarray(gate_in, np.float64)
    expected = _numpy_rmsnorm(x64, weight, 1e-6) * gate64 / (1 + np.exp(-gate64))
    out = norm(x_in, gate_in)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=tolerance, atol=tolerance)


def test_gated_rmsnorm_with_zero_gate_is_zero():
    norm = GatedRMSNorm(4)
    out = norm(jnp.ones((2, 4)), jnp.zeros((2, 4)))
    np.testing.assert_array_equal(out, np.zeros((2, 4)))

"""Tests for jdistill.losses.reduction.reduce_tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.losses import REDUCTIONS, reduce_tokens


@pytest.fixture
def values_and_mask():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 5)).astype(np.float32)
    mask = rng.random((3, 5)) < 0.6
    mask[0] = False  # one fully masked row
    return values, mask


@pytest.mark.parametrize("mask_dtype", [bool, np.int32, np.float32])
def test_mean_is_sum_over_valid_divided_by_count(values_and_mask, mask_dtype):
    values, mask = values_and_mask
    expected = values[mask].sum() / mask.sum()
    np.testing.assert_allclose(reduce_tokens(values, mask.astype(mask_dtype), "mean"), expected, rtol=1e-6)


def test_sum_is_sum_over_valid(values_and_mask):
    values, mask = values_and_mask
    np.testing.assert_allclose(reduce_tokens(values, mask, "sum"), values[mask].sum(), rtol=1e-6)


def test_sum_count_returns_float32_sum_and_count(values_and_mask):
    values, mask = values_and_mask
    total, count = reduce_tokens(values, mask, "sum_count")
    assert total.dtype == jnp.float32 and count.dtype == jnp.float32
    assert total.shape == () and count.shape == ()
    np.testing.assert_allclose(total, values[mask].sum(), rtol=1e-6)
    assert count == mask.sum()


def test_none_zeroes_masked_positions(values_and_mask):
    values, mask = values_and_mask
    np.testing.assert_array_equal(reduce_tokens(values, mask, "none"), np.where(mask, values, 0.0))


def test_no_mask_counts_every_position(values_and_mask):
    values, _ = values_and_mask
    np.testing.assert_allclose(reduce_tokens(values, None, "mean"), values.mean(), rtol=1e-6)
    assert reduce_tokens(values, None, "sum_count")[1] == values.size


def test_mask_broadcasts_to_values(values_and_mask):
    values, _ = values_and_mask
    row_mask = np.array([[True], [False], [True]])
    expected = values[[0, 2]].mean()
    np.testing.assert_allclose(reduce_tokens(values, row_mask, "mean"), expected, rtol=1e-6)


def test_all_masked_mean_is_zero_with_zero_gradient(values_and_mask):
    values, mask = values_and_mask
    none_valid = np.zeros_like(mask)
    assert reduce_tokens(values, none_valid, "mean") == 0.0
    grad = jax.grad(lambda v: reduce_tokens(v, none_valid, "mean"))(jnp.asarray(values))
    np.testing.assert_array_equal(grad, 0.0)


def test_non_finite_masked_values_do_not_leak(values_and_mask):
    values, mask = values_and_mask
    poisoned = np.where(mask, values, np.nan).astype(np.float32)
    np.testing.assert_allclose(reduce_tokens(poisoned, mask, "mean"), values[mask].mean(), rtol=1e-6)
    grad = jax.grad(lambda v: reduce_tokens(v, mask, "mean"))(jnp.asarray(poisoned))
    np.testing.assert_allclose(grad, mask / mask.sum(), rtol=1e-6)


def test_sum_count_over_micro_batches_equals_full_mean(values_and_mask):
    values, mask = values_and_mask
    pieces = [reduce_tokens(v, m, "sum_count") for v, m in zip(np.split(values, 3), np.split(mask, 3), strict=True)]
    total = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(total, reduce_tokens(values, mask, "mean"), rtol=1e-6)


def test_bf16_values_are_reduced_in_float32():
    values = jnp.full((4,), 1.5, dtype=jnp.bfloat16)
    assert reduce_tokens(values, None, "mean").dtype == jnp.float32


def test_bad_reduction_names_argument_and_options(values_and_mask):
    values, mask = values_and_mask
    with pytest.raises(ValueError, match="reduction") as info:
        reduce_tokens(values, mask, "average")
    assert all(option in str(info.value) for option in REDUCTIONS)
    assert "'average'" in str(info.value)

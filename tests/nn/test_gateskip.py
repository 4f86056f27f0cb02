"""GateSkip residual gates: initialisation, stopped gradient into h, sparsity loss, budget skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.nn.gateskip import ResidualGate, gate_sparsity_loss, mean_gate, skip_mask, skip_tokens

D_MODEL = 16


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("per_channel", [True, False])
def test_initial_gate_is_about_sigmoid_five(per_channel):
    gate = ResidualGate(D_MODEL, per_channel=per_channel, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(gate.projection.bias[...], np.full(D_MODEL if per_channel else 1, 5.0))
    kernel = np.asarray(gate.projection.kernel[...])
    assert 0.005 < kernel.std() < 0.015 and abs(kernel.mean()) < 0.005
    h = jax.random.normal(jax.random.key(1), (2, 5, D_MODEL))
    values = gate.gate(h)
    assert values.shape == (2, 5, D_MODEL if per_channel else 1)
    np.testing.assert_allclose(values, _sigmoid(5.0), atol=5e-3)


def test_gate_and_output_match_numpy():
    gate = ResidualGate(D_MODEL, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, D_MODEL)).astype(np.float32)
    branch = rng.normal(size=(3, D_MODEL)).astype(np.float32)
    kernel, bias = np.asarray(gate.projection.kernel[...]), np.asarray(gate.projection.bias[...])
    expected_gate = _sigmoid(h.astype(np.float64) @ kernel + bias)
    out, values = gate(jnp.asarray(h), jnp.asarray(branch))
    np.testing.assert_allclose(values, expected_gate, rtol=1e-6)
    np.testing.assert_allclose(out, h + expected_gate * branch, rtol=1e-5, atol=1e-6)


def test_no_gradient_flows_into_h_through_the_gate():
    gate = ResidualGate(D_MODEL, rngs=nnx.Rngs(3))
    h = jax.random.normal(jax.random.key(4), (4, D_MODEL))
    grad_h = jax.grad(lambda x: jnp.sum(gate.gate(x) ** 2))(h)
    np.testing.assert_array_equal(grad_h, np.zeros_like(h))
    # through the residual path, h still gets the identity gradient
    branch = jnp.ones_like(h)
    grad_residual = jax.grad(lambda x: jnp.sum(gate(x, branch)[0]))(h)
    np.testing.assert_allclose(grad_residual, np.ones_like(h))


def test_gate_parameters_do_get_gradients():
    gate = ResidualGate(D_MODEL, rngs=nnx.Rngs(5))
    h = jax.random.normal(jax.random.key(6), (4, D_MODEL))
    branch = jax.random.normal(jax.random.key(7), (4, D_MODEL))
    grads = nnx.grad(lambda model: jnp.sum(model(h, branch)[0]))(gate)
    assert np.abs(np.asarray(grads.projection.kernel[...])).sum() > 0


def test_sparsity_loss():
    gates = jnp.asarray([[0.5, 1.0], [0.0, 0.5]])
    np.testing.assert_allclose(gate_sparsity_loss(gates), 0.01 * np.mean(np.square(gates)))
    per_branch = [jnp.full((2, 3), 0.5), jnp.full((4, 1), 1.0)]
    np.testing.assert_allclose(gate_sparsity_loss(per_branch, weight=0.1), 0.1 * (0.25 + 1.0) / 2, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(tokens=st.sampled_from([10, 37, 128, 401]), budget=st.floats(0.0, 0.95))
def test_skip_fraction_matches_the_budget_quantile(tokens, budget):
    importance = np.random.default_rng(tokens).permutation(tokens).astype(np.float32) / tokens
    skip = np.asarray(jax.jit(skip_mask)(importance, budget))
    assert abs(skip.mean() - budget) <= 1.0 / tokens + 1e-6
    # the skipped tokens are exactly the least important ones
    if skip.any() and not skip.all():
        assert importance[skip].max() < importance[~skip].min()


def test_skip_mask_per_sequence_and_skip_tokens():
    importance = jnp.asarray([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.3, 0.6]])
    skip = skip_mask(importance, 0.5, axis=-1)
    np.testing.assert_array_equal(skip, [[True, False, True, False], [False, True, True, False]])
    h = jnp.zeros((2, 4, 3))
    h_out = jnp.ones((2, 4, 3))
    np.testing.assert_array_equal(skip_tokens(h, h_out, skip)[..., 0], np.where(skip, 0.0, 1.0))
    np.testing.assert_allclose(mean_gate(jnp.asarray([[0.2, 0.4]])), [0.3], rtol=1e-6)
    with pytest.raises(ValueError, match="budget_quantile"):
        skip_mask(importance, 1.5)

"""Activations: the expanded gating range family, GoLU, and their GLU forms, against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.special import ndtr

from jdistill.nn.activations import (
    ACTIVATIONS,
    EXPANDED,
    ExpandedGatingActivation,
    atlu,
    get_activation,
    get_gate,
    glu,
    golu,
    xatlu,
    xgelu,
    xsilu,
)
from jdistill.nn.mlp import GLUMLP

X = np.linspace(-6.0, 6.0, 97, dtype=np.float32)
NUMPY_GATES = {
    "xgelu": ndtr,
    "xsilu": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "xatlu": lambda x: np.arctan(x) / np.pi + 0.5,
}
FUNCTIONS = {"xgelu": xgelu, "xsilu": xsilu, "xatlu": xatlu}


def test_alpha_zero_is_the_base_activation():
    x = jnp.asarray(X)
    np.testing.assert_array_equal(xgelu(x, 0.0), jax.nn.gelu(x, approximate=False))
    np.testing.assert_allclose(xsilu(x, 0.0), jax.nn.silu(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(xatlu(x, 0.0), X * (np.arctan(X) / np.pi + 0.5), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(atlu(x), xatlu(x, 0.0))


@pytest.mark.parametrize("kind", EXPANDED)
@pytest.mark.parametrize("alpha", [-0.3, 0.0, 0.5, 2.0])
def test_expanded_activation_matches_numpy(kind, alpha):
    x64 = X.astype(np.float64)
    expected = x64 * (NUMPY_GATES[kind](x64) * (1 + 2 * alpha) - alpha)
    np.testing.assert_allclose(FUNCTIONS[kind](jnp.asarray(X), alpha), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", EXPANDED)
def test_expanded_gate_range_is_minus_alpha_to_one_plus_alpha(kind):
    gate_module = ExpandedGatingActivation(kind)
    gate_module.alpha[...] = jnp.asarray(0.25)
    gates = gate_module.gate(jnp.asarray([-1e4, 1e4], jnp.float32))
    np.testing.assert_allclose(gates, [-0.25, 1.25], atol=1e-3)


@pytest.mark.parametrize("kind", EXPANDED)
def test_gradients_wrt_x_and_alpha(kind):
    with jax.enable_x64(True):
        x = jnp.linspace(-3.0, 3.0, 13, dtype=jnp.float64)
        check_grads(jax.jit(FUNCTIONS[kind]), (x, jnp.asarray(0.3, jnp.float64)), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("kind", EXPANDED)
def test_gradient_wrt_alpha_is_x_times_two_g_minus_one(kind):
    x = jnp.asarray(X)
    grad = jax.vmap(jax.grad(FUNCTIONS[kind], argnums=1), in_axes=(0, None))(x, 0.7)
    np.testing.assert_allclose(grad, X * (2 * NUMPY_GATES[kind](X) - 1), rtol=2e-5, atol=2e-6)


def test_module_alpha_is_a_trainable_scalar_initialised_zero():
    module = ExpandedGatingActivation("xsilu")
    assert module.alpha[...].shape == () and float(module.alpha[...]) == 0.0
    x = jnp.asarray(X)
    np.testing.assert_allclose(module(x), jax.nn.silu(x), rtol=1e-6, atol=1e-7)

    def loss(model):
        return jnp.sum(model(x))

    grads = nnx.grad(loss)(module)
    np.testing.assert_allclose(grads.alpha[...], np.sum(X * (2 * NUMPY_GATES["xsilu"](X) - 1)), rtol=1e-4)


def test_unknown_expanded_kind_is_rejected():
    with pytest.raises(ValueError, match="xgelu"):
        ExpandedGatingActivation("gelu")


def test_golu_values_and_derivative_at_zero():
    assert float(golu(jnp.float32(0.0))) == 0.0
    np.testing.assert_allclose(jax.grad(golu)(jnp.float32(0.0)), 1 / math.e, rtol=1e-6)
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(golu(jnp.asarray(X)), x64 * np.exp(-np.exp(-x64)), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("value", [-100.0, -1e4, -7.5, 50.0])
def test_golu_value_and_gradient_finite_far_out(dtype, value):
    x = jnp.asarray(value, dtype)
    out, grad = jax.value_and_grad(golu)(x)
    assert out.dtype == dtype and grad.dtype == dtype
    assert np.isfinite(float(out)) and np.isfinite(float(grad))
    if value < 0:
        assert float(out) == 0.0 and float(grad) == 0.0


def test_golu_gradient_in_float64():
    with jax.enable_x64(True):
        check_grads(jax.jit(golu), (jnp.linspace(-5.0, 5.0, 11, dtype=jnp.float64),), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_is_x_times_its_gate(name):
    x = jnp.asarray(X)
    np.testing.assert_allclose(get_activation(name)(x), x * get_gate(name)(x), rtol=1e-6, atol=1e-7)


def test_existing_names_keep_their_meaning():
    assert get_activation("gelu") is jax.nn.gelu and get_activation("silu") is jax.nn.silu
    with pytest.raises(ValueError, match="relu"):
        get_activation("relu")


def test_glu_orders():
    gate_input = jnp.asarray(X)
    up_input = jnp.asarray(X[::-1].copy())
    np.testing.assert_allclose(glu(gate_input, up_input, jax.nn.sigmoid, 1), jax.nn.sigmoid(gate_input) * up_input)
    np.testing.assert_allclose(
        glu(gate_input, up_input, jax.nn.sigmoid, 2), jax.nn.silu(gate_input) * up_input, rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match="order"):
        glu(gate_input, up_input, jax.nn.sigmoid, 3)


SWIGLU = GLUMLP(8, 16, "silu", order=2, rngs=nnx.Rngs(0))
SWIGLU_FORWARD = jax.jit(lambda x: SWIGLU(x))


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 5))
def test_glu_mlp_order_two_silu_is_swiglu(batch, seq):
    x = np.random.default_rng(batch * 10 + seq).normal(size=(batch, seq, 8)).astype(np.float32)
    gate_w, up_w, down_w = (np.asarray(layer.kernel[...]) for layer in (SWIGLU.gate, SWIGLU.up, SWIGLU.down))
    gate_out = x @ gate_w
    expected = (gate_out / (1 + np.exp(-gate_out)) * (x @ up_w)) @ down_w
    np.testing.assert_allclose(SWIGLU_FORWARD(x), expected, rtol=1e-5, atol=1e-5)
    assert SWIGLU.gate.bias is None and SWIGLU.down.bias is None


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("kind", EXPANDED)
def test_glu_mlp_with_expanded_gate_starts_at_the_base_gate(order, kind):
    expanded = GLUMLP(8, 16, kind, order=order, rngs=nnx.Rngs(1))
    base_name = {"xgelu": "gelu_exact", "xsilu": "silu", "xatlu": "atlu"}[kind]
    base = GLUMLP(8, 16, base_name, order=order, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 3, 8))
    np.testing.assert_allclose(expanded(x), base(x), rtol=1e-6, atol=1e-6)
    assert float(expanded.gating.alpha[...]) == 0.0 and base.gating is None

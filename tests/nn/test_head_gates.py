"""Causal head gating: gate initialisation, the objective, gating head outputs, and head labels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill.nn.head_gates import HEAD_ROLES, HeadGates, apply_head_gates, classify_heads, head_gating_objective


def test_gates_start_near_one():
    gates = HeadGates(3, 4)
    assert gates.logits[...].shape == (3, 4)
    np.testing.assert_allclose(gates.gates(), np.full((3, 4), 1 / (1 + np.exp(-3.0))), rtol=1e-6)
    assert gates.gates(layer=1).shape == (4,)
    assert np.all(np.asarray(gates.gates()) > 0.9)


def test_gating_scales_each_head():
    gates = HeadGates(2, 3, initial_logit=0.0)
    gates.logits[...] = jnp.asarray([[0.0, 100.0, -100.0], [1.0, 2.0, 3.0]])
    outputs = jnp.ones((2, 5, 3, 4))
    gated = gates(outputs, layer=0)
    np.testing.assert_allclose(gated[0, 0, :, 0], [0.5, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(apply_head_gates(outputs, jnp.asarray([0.25, 1.0, 0.0]))[1, 2, :, 3], [0.25, 1.0, 0.0])


def test_objective_is_nll_minus_lambda_sum_of_logits():
    logits = jnp.asarray([[1.0, -2.0], [0.5, 3.0]])
    np.testing.assert_allclose(head_gating_objective(2.0, logits, 0.1), 2.0 - 0.1 * 2.5)
    np.testing.assert_allclose(head_gating_objective(2.0, logits, 0.0), 2.0)
    grad = jax.grad(head_gating_objective, argnums=1)(2.0, logits, -0.3)
    np.testing.assert_allclose(grad, np.full((2, 2), 0.3))


def _fit(lam, steps=200):
    """A toy 'frozen model' with 3 heads whose NLL wants head 0 on, head 1 off, and ignores head 2."""
    gates = HeadGates(1, 3)
    optimizer = nnx.Optimizer(gates, optax.adam(0.1), wrt=nnx.Param)

    def loss(model):
        g = model.gates(0)
        nll = 4.0 * (1.0 - g[0]) ** 2 + 4.0 * g[1] ** 2
        return head_gating_objective(nll, model.logits[...], lam)

    @nnx.jit
    def step(model, opt):
        opt.update(model, nnx.grad(loss)(model))

    for _ in range(steps):
        step(gates, optimizer)
    return gates.gates()


def test_fitted_gates_classify_the_toy_heads():
    labels = classify_heads(_fit(0.05), _fit(-0.05))
    np.testing.assert_array_equal(labels, [["facilitating", "interfering", "irrelevant"]])


def test_classify_heads_on_synthetic_gates():
    g_plus = np.asarray([[0.95, 0.02, 0.99, 0.1]])
    g_minus = np.asarray([[0.9, 0.01, 0.03, 0.8]])
    labels = classify_heads(g_plus, g_minus)
    np.testing.assert_array_equal(labels, [["facilitating", "interfering", "irrelevant", "unclassified"]])
    assert set(labels.ravel()) <= set(HEAD_ROLES)
    np.testing.assert_array_equal(classify_heads(g_plus, g_minus, threshold=0.92)[0, :2], ["irrelevant", "interfering"])
    with pytest.raises(ValueError, match="same shape"):
        classify_heads(g_plus, g_minus[:, :2])

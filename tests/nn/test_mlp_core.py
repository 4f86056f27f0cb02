"""`dense_mlp`'s hand-written backward equals autodiff of `W_out act(x W_in + b_in) + b_out`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.nn import MLP
from jdistill.nn.activations import get_activation
from jdistill.nn.mlp_core import dense_mlp


def plain_mlp(activation, x, w_in, b_in, w_out, b_out):
    h = activation(x @ w_in + (0.0 if b_in is None else b_in))
    return h @ w_out + (0.0 if b_out is None else b_out)


@pytest.mark.parametrize("name", ["gelu", "gelu_exact", "silu", "golu", "atlu"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_autodiff(name, bias):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    w_in, w_out = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((5, 7), (7, 4)))
    b_in, b_out = (jnp.asarray(rng.normal(size=s), jnp.float32) if bias else None for s in ((7,), (4,)))
    d_y = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    act = get_activation(name)
    args = (x, w_in, b_in, w_out, b_out)
    np.testing.assert_allclose(dense_mlp(act, *args), plain_mlp(act, *args), rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda *a: jnp.sum(dense_mlp(act, *a) * d_y), argnums=(0, 1, 2, 3, 4))(*args)
    want = jax.grad(lambda *a: jnp.sum(plain_mlp(act, *a) * d_y), argnums=(0, 1, 2, 3, 4))(*args)
    for got, expected in zip(ours, want, strict=True):
        if expected is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gelu", "xgelu"])
def test_mlp_module_gradients_and_bf16(name):
    model = MLP(6, 12, name, rngs=nnx.Rngs(0))
    model.up.bias[...] = 0.1 * jnp.arange(12.0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 6)), jnp.float32)
    graphdef, params = nnx.split(model)

    def reference(params, x):
        m = nnx.merge(graphdef, params)
        return m.down(m.activation(m.up(x)))

    ours = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x)))))(params)
    want = jax.grad(lambda p: jnp.sum(jnp.sin(reference(p, x))))(params)
    for got, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    bf16 = MLP(6, 12, name, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert bf16(x).dtype == jnp.bfloat16
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(*nnx.split(bf16)[:1], p)(x).astype(jnp.float32)))(nnx.split(bf16)[1])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))


def test_linear_gradients_match_autodiff():
    from jdistill.nn.mlp_core import linear

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    d_y = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    np.testing.assert_allclose(linear(x, w), x @ w, rtol=1e-6)
    ours = jax.grad(lambda x, w: jnp.sum(linear(x, w) * d_y), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * d_y), argnums=(0, 1))(x, w)
    for got, expected in zip(ours, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

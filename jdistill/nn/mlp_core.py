"""The two-layer MLP `W_out act(x W_in + b_in) + b_out` as one function with a hand-written backward, and a
bias-free `linear` with the same treatment (the attention projections).

Autodiff of the same expression leaves XLA's CPU backend free to pick operand layouts for the weight-gradient
dots; it materialises a transposed copy of the hidden gradient and runs the slow transposed-operand matmul (the
MLP's forward + backward then costs ~1.3x PyTorch's on a CPU core). The backward here is the textbook one, with
`act'` from a forward-mode derivative of the (elementwise) activation at the saved pre-activation u:

    dW_out = h^T dy,   db_out = sum dy,   du = (dy W_out^T) * act'(u),
    dW_in  = x^T du,   db_in  = sum du,   dx = du W_in^T,        h = act(u).

Shapes: x `[..., d_in]`, w_in `[d_in, hidden]`, w_out `[hidden, d_out]`, biases `[hidden]`, `[d_out]` or None.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _matmul(x, w):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _forward(activation, x, w_in, b_in, w_out, b_out):
    u = _matmul(x, w_in)
    if b_in is not None:
        u = u + b_in
    h = activation(u)
    y = _matmul(h, w_out)
    if b_out is not None:
        y = y + b_out
    return y, (x, u, h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense_mlp(activation, x, w_in, b_in, w_out, b_out):
    """`act(x W_in + b_in) W_out + b_out`; `activation` is an elementwise function (a static argument)."""
    return _forward(activation, x, w_in, b_in, w_out, b_out)[0]


def _dense_mlp_fwd(activation, x, w_in, b_in, w_out, b_out):
    y, (x, u, h) = _forward(activation, x, w_in, b_in, w_out, b_out)
    return y, (x, u, h, w_in, w_out, b_in is not None, b_out is not None)


def _contract_rows(a, b):
    """`a^T b` for `a [n, i]`, `b [n, j]` -> `[i, j]`."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _dense_mlp_bwd(activation, residuals, d_y):
    x, u, h, w_in, w_out, has_b_in, has_b_out = residuals
    rows = lambda a: a.reshape(-1, a.shape[-1])
    x2, u2, h2, d_y2 = rows(x), rows(u), rows(h), rows(d_y)
    d_w_out = _contract_rows(h2, d_y2)
    d_h = jax.lax.dot_general(d_y2, w_out, (((1,), (1,)), ((), ())))
    _, slope = jax.jvp(activation, (u2,), (jnp.ones_like(u2),))
    d_u = d_h * slope
    d_w_in = _contract_rows(x2, d_u)
    d_x = jax.lax.dot_general(d_u, w_in, (((1,), (1,)), ((), ()))).reshape(x.shape)
    d_b_in = d_u.sum(axis=0) if has_b_in else None
    d_b_out = d_y2.sum(axis=0) if has_b_out else None
    return d_x, d_w_in.astype(w_in.dtype), d_b_in, d_w_out.astype(w_out.dtype), d_b_out


dense_mlp.defvjp(_dense_mlp_fwd, _dense_mlp_bwd)


@jax.custom_vjp
def linear(x, w):
    """`x W` over the last axis (no bias), with the same explicit backward: dW = x^T dy, dx = dy W^T."""
    return _matmul(x, w)


def _linear_fwd(x, w):
    return _matmul(x, w), (x, w)


def _linear_bwd(residuals, d_y):
    x, w = residuals
    d_y2 = d_y.reshape(-1, d_y.shape[-1])
    d_w = _contract_rows(x.reshape(-1, x.shape[-1]), d_y2)
    d_x = jax.lax.dot_general(d_y2, w, (((1,), (1,)), ((), ()))).reshape(x.shape)
    return d_x, d_w.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)

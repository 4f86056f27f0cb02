"""Shared helpers for the kernel tests: random attention inputs and value+gradient comparison."""

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.kernels import gated_attention_reference


def make_inputs(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, gate_kind, segments, dtype):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    q = normal(batch, q_len, heads, head_dim)
    k, v = normal(batch, kv_len, kv_heads, head_dim), normal(batch, kv_len, kv_heads, head_dim)
    gate = {
        "none": None,
        "headwise": lambda: normal(batch, q_len, heads),
        "elementwise": lambda: normal(batch, q_len, heads, head_dim),
    }[gate_kind]
    gate = gate() if gate is not None else None
    segment_ids = None
    if segments:
        segment_ids = jnp.asarray(np.sort(rng.integers(0, 3, size=(batch, q_len)), axis=1), jnp.int32)
    cotangent = normal(batch, q_len, heads, head_dim)
    return (q, k, v, gate), segment_ids, cotangent


def values_and_grads(attention, args, cotangent, **kwargs):
    """`(out, (dq, dk, dv[, dgate]))` of `attention(*args, **kwargs)` under one jit, pulled back by `cotangent`."""
    diff_args = tuple(a for a in args if a is not None)

    @jax.jit
    def run(diff_args, cotangent):
        def fn(*xs):
            full = list(xs) + [None] * (len(args) - len(xs))
            return attention(*full, **kwargs)

        out, pullback = jax.vjp(fn, *diff_args)
        return out, pullback(cotangent)

    return run(diff_args, cotangent)


def reference_in_float32(args, cotangent, **kwargs):
    def up(x):
        return None if x is None else x.astype(jnp.float32)

    return values_and_grads(gated_attention_reference, tuple(map(up, args)), up(cotangent), **kwargs)


def assert_close(got, want, atol, rtol, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=what)

"""The gated delta rule: the recurrence against a numpy loop of the formula, and the chunked (WY) form against
the recurrence — values, final states and gradients (float32, tolerance 1e-4 absolute and relative; the chunked
form reassociates sums through a triangular solve)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.kernels import gated_delta_rule
from jdistill.kernels.delta_rule import delta_rule_chunked, delta_rule_recurrent


def make_inputs(seed, batch, seq, heads, key_dim, value_dim, with_state):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(size=shape).astype(np.float32)

    k = normal(batch, seq, heads, key_dim)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    g = -np.abs(normal(batch, seq, heads)) * 0.5
    beta = 1 / (1 + np.exp(-normal(batch, seq, heads)))
    state = normal(batch, heads, key_dim, value_dim) if with_state else None
    return normal(batch, seq, heads, key_dim), k, normal(batch, seq, heads, value_dim), g, beta, state


def numpy_delta_rule(q, k, v, g, beta, state):
    batch, seq, heads, key_dim = q.shape
    state = np.zeros((batch, heads, key_dim, v.shape[-1])) if state is None else state.astype(np.float64)
    out = np.zeros(v.shape)
    for b in range(batch):
        for h in range(heads):
            s = state[b, h].copy()
            for t in range(seq):
                s = s * np.exp(g[b, t, h])
                delta = beta[b, t, h] * (v[b, t, h] - s.T @ k[b, t, h])
                s = s + np.outer(k[b, t, h], delta)
                out[b, t, h] = s.T @ q[b, t, h]
            state[b, h] = s
    return out, state


def test_recurrence_matches_the_formula():
    args = make_inputs(0, 2, 6, 2, 4, 3, with_state=True)
    out, final = gated_delta_rule(*args[:5], initial_state=args[5], output_final_state=True, impl="recurrent")
    want_out, want_final = numpy_delta_rule(*args)
    np.testing.assert_allclose(np.asarray(out), want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(final), want_final, atol=1e-5, rtol=1e-5)


@jax.jit
def _both_forms(q, k, v, g, beta, state, cotangent):
    def run(form):
        def fn(*xs):
            out, final = form(*xs)
            return jnp.sum(out * cotangent) + jnp.sum(jnp.sin(final)), (out, final)

        return jax.grad(fn, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(q, k, v, g, beta, state)

    return run(delta_rule_recurrent), run(lambda *xs: delta_rule_chunked(*xs, chunk=4))


@settings(max_examples=4, deadline=None)
@given(
    seq=st.integers(1, 13), heads=st.integers(1, 2), dims=st.sampled_from([(4, 4), (8, 3)]), seed=st.integers(0, 2**16)
)
def test_chunked_form_values_and_grads_match_recurrence(seq, heads, dims, seed):
    q, k, v, g, beta, state = map(jnp.asarray, make_inputs(seed, 2, seq, heads, *dims, with_state=True))
    cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=v.shape), jnp.float32)
    (grads_r, (out_r, final_r)), (grads_c, (out_c, final_c)) = _both_forms(q, k, v, g, beta, state, cotangent)
    for name, got, want in [("out", out_c, out_r), ("final", final_c, final_r)] + list(
        zip(["dq", "dk", "dv", "dg", "dbeta", "dstate"], grads_c, grads_r, strict=True)
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4, err_msg=name)


def test_default_chunk_of_64_with_an_odd_length_and_no_initial_state():
    args = make_inputs(1, 1, 67, 2, 8, 8, with_state=False)
    out_r, final_r = gated_delta_rule(*args[:5], output_final_state=True, impl="recurrent")
    out_c, final_c = gated_delta_rule(*args[:5], output_final_state=True, impl="auto")
    np.testing.assert_allclose(np.asarray(out_c), np.asarray(out_r), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(final_c), np.asarray(final_r), atol=1e-4, rtol=1e-4)


def test_chunked_form_has_no_triangular_solve():
    """The WY solve is written out as forward substitution: a full-size hybrid LM's train step with XLA:CPU's
    batched triangular solve in it hung (0 % CPU, every thread idle) after its first steps were dispatched."""
    q, k, v, g, beta = (jnp.ones((1, 80, 2, 16)),) * 3 + (jnp.zeros((1, 80, 2)), jnp.full((1, 80, 2), 0.5))
    loss = lambda q, k, v: jnp.sum(delta_rule_chunked(q, k, v, g, beta)[0])
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).as_text()
    assert "triangular" not in text.lower()


def test_bad_gate_shape_is_rejected():
    q, k, v, g, beta, _ = make_inputs(0, 1, 3, 2, 4, 4, with_state=False)
    with pytest.raises(ValueError, match="g and beta must be"):
        gated_delta_rule(q, k, v, g[..., None], beta)


@pytest.mark.parametrize("backend,seq,with_state", [("gpu", 13, True), ("tpu", 21, False)])
def test_pallas_forward_matches_chunked_form_in_interpret_mode(backend, seq, with_state):
    from jdistill.kernels.delta_rule_pallas import delta_rule_pallas

    q, k, v, g, beta, state = (
        None if x is None else jnp.asarray(x) for x in make_inputs(4, 2, seq, 2, 8, 4, with_state=with_state)
    )
    want = delta_rule_chunked(q, k, v, g, beta, state, chunk=8)
    got = delta_rule_pallas(q, k, v, g, beta, state, backend=backend, interpret=True, chunk=8)
    for name, a, b in zip(["out", "final"], got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=name)


def test_pallas_gradients_are_the_chunked_forms():
    args = tuple(map(jnp.asarray, make_inputs(5, 1, 10, 2, 4, 4, with_state=True)))

    def loss(impl):
        def fn(*xs):
            out, final = gated_delta_rule(*xs[:5], initial_state=xs[5], output_final_state=True, impl=impl)
            return jnp.sum(jnp.sin(out)) + jnp.sum(jnp.cos(final))

        return fn

    got = jax.grad(loss("interpret"), argnums=tuple(range(6)))(*args)
    want = jax.grad(loss("chunked"), argnums=tuple(range(6)))(*args)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_pallas_gpu_forward_lowers_to_triton_for_cuda():
    from jdistill.kernels.delta_rule_pallas import delta_rule_pallas

    def spec(*shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype)

    args = (
        spec(1, 200, 2, 128),
        spec(1, 200, 2, 128),
        spec(1, 200, 2, 128),
        spec(1, 200, 2, dtype=jnp.float32),
        spec(1, 200, 2, dtype=jnp.float32),
    )
    program = jax.jit(lambda *xs: delta_rule_pallas(*xs, backend="gpu")[0])
    assert "__gpu$xla.gpu.triton" in program.trace(*args).lower(lowering_platforms=("cuda",)).as_text()

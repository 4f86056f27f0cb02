"""ReGLA: the chunked form equals the recurrent one (odd lengths, carried state, strong decays), a numpy
recurrence, causality, and the bounded feature map and refining gate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.nn.regla import ReGLA, gla_chunked, gla_recurrent, refined_log_decay, safe_exp_features

BATCH, HEADS, KEY_DIM, VALUE_DIM = 2, 2, 4, 3
CHUNK = 8


def _inputs(seq, seed=0, decay_scale=1.0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, (BATCH, seq, HEADS, KEY_DIM)).astype(np.float32)
    k = rng.uniform(0, 1, (BATCH, seq, HEADS, KEY_DIM)).astype(np.float32)
    v = rng.normal(size=(BATCH, seq, HEADS, VALUE_DIM)).astype(np.float32)
    log_decay = (-decay_scale * rng.uniform(0, 1, (BATCH, seq, HEADS, KEY_DIM))).astype(np.float32)
    return q, k, v, log_decay


def _numpy_recurrence(q, k, v, log_decay):
    state = np.zeros((BATCH, HEADS, KEY_DIM, VALUE_DIM))
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        state = np.exp(log_decay[:, t])[..., None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], state)
    return out, state


_recurrent = jax.jit(gla_recurrent)
_chunked = jax.jit(gla_chunked, static_argnames="chunk_size")


def test_recurrent_form_matches_numpy():
    inputs = _inputs(11)
    out, state = _recurrent(*inputs)
    expected_out, expected_state = _numpy_recurrence(*inputs)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, expected_state, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seq=st.sampled_from([1, 8, 13, 37]), seed=st.integers(0, 1000))
def test_chunked_equals_recurrent_for_any_length(seq, seed):
    inputs = _inputs(seq, seed)
    initial = np.random.default_rng(seed + 1).normal(size=(BATCH, HEADS, KEY_DIM, VALUE_DIM)).astype(np.float32)
    out_r, state_r = _recurrent(*inputs, initial)
    out_c, state_c = _chunked(*inputs, initial, chunk_size=CHUNK)
    assert out_c.shape == (BATCH, seq, HEADS, VALUE_DIM)
    np.testing.assert_allclose(out_c, out_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state_c, state_r, rtol=1e-4, atol=1e-5)


def test_chunked_is_finite_and_equal_under_strong_decay():
    inputs = _inputs(29, seed=3, decay_scale=60.0)
    out_r, _ = _recurrent(*inputs)
    out_c, state_c = _chunked(*inputs, chunk_size=CHUNK)
    assert np.all(np.isfinite(out_c)) and np.all(np.isfinite(state_c))
    np.testing.assert_allclose(out_c, out_r, rtol=1e-4, atol=1e-6)


def test_splitting_the_sequence_and_carrying_the_state_is_exact():
    q, k, v, log_decay = _inputs(20, seed=4)
    full, _ = _chunked(q, k, v, log_decay, chunk_size=CHUNK)
    first, state = _chunked(q[:, :9], k[:, :9], v[:, :9], log_decay[:, :9], chunk_size=CHUNK)
    second, _ = _recurrent(q[:, 9:], k[:, 9:], v[:, 9:], log_decay[:, 9:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, rtol=1e-4, atol=1e-5)


def test_chunked_gradients_equal_recurrent():
    inputs = _inputs(13, seed=5)

    def loss(form, *args):
        return jnp.sum(jnp.sin(form(*args)[0]))

    grads_r = jax.jit(jax.grad(lambda *a: loss(gla_recurrent, *a), argnums=(0, 1, 2, 3)))(*inputs)
    chunked = jax.grad(lambda *a: loss(lambda *b: gla_chunked(*b, chunk_size=CHUNK), *a), argnums=(0, 1, 2, 3))
    grads_c = jax.jit(chunked)(*inputs)
    for grad_c, grad_r in zip(grads_c, grads_r, strict=True):
        np.testing.assert_allclose(grad_c, grad_r, rtol=1e-4, atol=1e-5)


def test_gradient_checks_in_float64():
    with jax.enable_x64(True):
        q, k, v, log_decay = (jnp.asarray(a, jnp.float64) for a in _inputs(6, seed=6))
        check_grads(jax.jit(lambda *a: gla_chunked(*a, chunk_size=4)[0]), (q, k, v, log_decay), order=1, modes=("rev",))
        x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 5)))
        check_grads(jax.jit(safe_exp_features), (x,), order=1, modes=("rev",))
        check_grads(jax.jit(refined_log_decay), (x, x[::-1]), order=1, modes=("rev",))


def test_safe_exp_features_are_bounded():
    x = jnp.asarray([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    features = safe_exp_features(x)
    assert np.all(np.isfinite(features)) and np.all(features >= 0) and np.all(features <= 1)
    np.testing.assert_allclose(features[1], np.exp((np.asarray([1.0, 2.0, 3.0]) - 3.0) / np.sqrt(3)), rtol=1e-6)


def test_refined_gate():
    forget = jnp.asarray([-2.0, 0.0, 4.0, 30.0])
    f = 1 / (1 + np.exp(-np.asarray(forget, np.float64)))
    for refine, expected in ((-1e4, f**2), (1e4, 1 - (1 - f) ** 2), (0.0, f)):
        np.testing.assert_allclose(np.exp(refined_log_decay(forget, jnp.full(4, refine))), expected, rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(lambda a: refined_log_decay(a, a).sum())(jnp.asarray([-80.0, 80.0]))))


MODEL = ReGLA(16, 2, chunk_size=4, rngs=nnx.Rngs(0))
_model_forward = jax.jit(lambda x, mode: MODEL(x, mode=mode, return_state=True), static_argnames="mode")


def test_module_modes_agree_and_shapes():
    x = jax.random.normal(jax.random.key(1), (2, 11, 16))
    y_c, state_c = _model_forward(x, "chunked")
    y_r, state_r = _model_forward(x, "recurrent")
    assert y_c.shape == x.shape and state_c.shape == (2, 2, 8, 8)
    np.testing.assert_allclose(y_c, y_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state_c, state_r, rtol=1e-4, atol=1e-5)


def test_module_is_causal():
    x = jax.random.normal(jax.random.key(2), (1, 10, 16))
    changed = x.at[:, 6].add(5.0)
    before, _ = _model_forward(x, "chunked")
    after, _ = _model_forward(changed, "chunked")
    np.testing.assert_allclose(before[:, :6], after[:, :6], rtol=1e-6, atol=1e-6)
    assert not np.allclose(before[:, 6:], after[:, 6:])


def test_module_gate_initialisation_and_errors():
    np.testing.assert_array_equal(MODEL.forget_gate.bias[...], np.full(16, 3.0))
    np.testing.assert_array_equal(MODEL.refine_gate.bias[...], np.zeros(16))
    with pytest.raises(ValueError, match="divisible"):
        ReGLA(10, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mode"):
        MODEL(jnp.zeros((1, 2, 16)), mode="parallel")

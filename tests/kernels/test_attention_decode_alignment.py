"""The XLA attention reference with kv_len != q_len (decoding with a cache): under causal masking the queries are
the LAST q_len positions, query i at absolute position kv_len - q_len + i, attending to keys at positions <= its
own. Values against float64 numpy; gradients against float64 central differences along random directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.kernels import gated_attention


def numpy_decode_attention(q, k, v, gate, *, causal, window=None):
    """Query i sits at position kv_len - q_len + i; a query with no visible key outputs 0."""
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    out = np.zeros((batch, q_len, heads, dim))
    for i in range(q_len):
        position = kv_len - q_len + i
        keys = np.arange(kv_len)
        visible = np.ones(kv_len, bool)
        if causal:
            visible &= keys <= position
        if window is not None:
            visible &= np.abs(position - keys) < window
        if not visible.any():
            continue
        for h in range(heads):
            kh = h * kv_heads // heads
            scores = k[:, visible, kh] @ q[:, i, h][:, :, None] / np.sqrt(dim)  # [batch, visible, 1]
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[:, i, h] = np.sum(weights * v[:, visible, kh], axis=1)
    if gate is not None:
        out = out / (1 + np.exp(-(gate if gate.ndim == 4 else gate[..., None])))
    return out


CASES = [  # (q_len, kv_len, heads, kv_heads, gate, causal, window)
    (1, 9, 4, 2, "headwise", True, None),  # one decoding step over a cache
    (3, 8, 4, 2, "elementwise", True, None),  # a chunk of new tokens (prefill continuation)
    (3, 8, 2, 2, None, True, 4),  # sliding window, aligned at the end
    (5, 3, 4, 1, "headwise", True, None),  # more queries than keys: the first two see nothing
    (3, 8, 4, 2, "headwise", False, None),  # bidirectional: every key
]


def _inputs(q_len, kv_len, heads, kv_heads, gate, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, q_len, heads, 8))
    k, v = rng.normal(size=(2, kv_len, kv_heads, 8)), rng.normal(size=(2, kv_len, kv_heads, 8))
    g = {
        None: None,
        "headwise": rng.normal(size=(2, q_len, heads)) * 2,
        "elementwise": rng.normal(size=(2, q_len, heads, 8)) * 2,
    }[gate]
    return q, k, v, g


@pytest.mark.parametrize("q_len, kv_len, heads, kv_heads, gate, causal, window", CASES)
def test_values_match_numpy(q_len, kv_len, heads, kv_heads, gate, causal, window):
    q, k, v, g = _inputs(q_len, kv_len, heads, kv_heads, gate)
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    got = gated_attention(f32(q), f32(k), f32(v), f32(g), causal=causal, window=window, impl="xla")
    want = numpy_decode_attention(q, k, v, g, causal=causal, window=window)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_a_single_decoding_query_sees_every_cached_key():
    """The decode case directly: with q_len = 1 the causal mask hides nothing, so it equals bidirectional
    attention (a mask aligned at the start would let the query see only key 0)."""
    q, k, v, g = _inputs(1, 9, 4, 2, "headwise", seed=3)
    causal = gated_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, g)), causal=True, impl="xla")
    full = gated_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, g)), causal=False, impl="xla")
    np.testing.assert_allclose(np.asarray(causal), np.asarray(full), atol=1e-6)
    first_key_only = np.asarray(v[:, :1]).repeat(2, axis=2) / (1 + np.exp(-g[..., None]))
    assert np.max(np.abs(np.asarray(causal) - first_key_only)) > 1e-2


@pytest.mark.parametrize("q_len, kv_len, heads, kv_heads, gate, causal, window", CASES[:4])
def test_gradients_match_float64_finite_differences(q_len, kv_len, heads, kv_heads, gate, causal, window):
    """d/d(eps) <c, attention(x + eps * d)> at 0 equals <grad, d> for every input x and a random direction d."""
    q, k, v, g = _inputs(q_len, kv_len, heads, kv_heads, gate, seed=1)
    rng = np.random.default_rng(2)
    args = [x for x in (q, k, v, g) if x is not None]
    cotangent = rng.normal(size=q.shape)

    def objective_np(*xs):
        full = list(xs) + [None] * (4 - len(xs))
        return float(np.sum(cotangent * numpy_decode_attention(*full, causal=causal, window=window)))

    def objective_jax(*xs):
        full = list(xs) + [None] * (4 - len(xs))
        out = gated_attention(*full, causal=causal, window=window, impl="xla")
        return jnp.sum(jnp.asarray(cotangent, jnp.float32) * out)

    grads = jax.grad(objective_jax, argnums=tuple(range(len(args))))(*(jnp.asarray(x, jnp.float32) for x in args))
    eps = 1e-5
    for index, (arg, grad) in enumerate(zip(args, grads, strict=True)):
        direction = rng.normal(size=arg.shape)
        plus = [x + eps * direction if j == index else x for j, x in enumerate(args)]
        minus = [x - eps * direction if j == index else x for j, x in enumerate(args)]
        numeric = (objective_np(*plus) - objective_np(*minus)) / (2 * eps)
        assert float(np.sum(np.asarray(grad) * direction)) == pytest.approx(numeric, rel=1e-4, abs=1e-4), index

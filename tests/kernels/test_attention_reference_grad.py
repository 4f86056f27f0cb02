"""The XLA reference's hand-written backward equals autodiff of the plain formula, in every masking case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.kernels import attention_mask, gated_attention_reference


def plain_attention(q, k, v, gate, *, causal, segment_ids, window, scale=None):
    """softmax(q k^T * scale + mask) v times sigmoid(gate), written directly (autodiff gives its gradient)."""
    _, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    mask = attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids, window=window)
    weights = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    weights = jnp.where(mask.any(-1, keepdims=True), weights, 0.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    if gate is not None:
        out = out * jax.nn.sigmoid(gate if gate.ndim == 4 else gate[..., None])
    return out


CASES = [  # (q_len, kv_len, heads, kv_heads, causal, segments, window, gate)
    (7, 7, 4, 4, True, False, None, "headwise"),
    (7, 7, 4, 2, False, False, None, "elementwise"),
    (6, 6, 4, 1, True, True, None, "headwise"),  # packed sequences, GQA
    (8, 8, 2, 2, True, False, 3, None),  # sliding window
    (5, 3, 2, 1, True, False, None, "headwise"),  # kv_len < q_len: the first rows see no key
    (3, 6, 2, 2, True, False, None, None),  # decoding-style: queries at the end
]


@pytest.mark.parametrize("q_len, kv_len, heads, kv_heads, causal, segments, window, gate_kind", CASES)
def test_gradients_match_autodiff_of_the_formula(q_len, kv_len, heads, kv_heads, causal, segments, window, gate_kind):
    rng = np.random.default_rng(q_len * 10 + kv_len)
    q = jnp.asarray(rng.normal(size=(2, q_len, heads, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, kv_len, kv_heads, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, kv_len, kv_heads, 8)), jnp.float32)
    gate = (
        None
        if gate_kind is None
        else jnp.asarray(
            rng.normal(size=(2, q_len, heads) if gate_kind == "headwise" else (2, q_len, heads, 8)), jnp.float32
        )
    )
    segment_ids = jnp.asarray([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]]) if segments else None
    d_out = jnp.asarray(rng.normal(size=(2, q_len, heads, 8)), jnp.float32)
    options = dict(causal=causal, segment_ids=segment_ids, window=window)

    def loss(fn):
        return lambda q, k, v, gate: jnp.sum(fn(q, k, v, gate, **options) * d_out)

    args = (q, k, v, gate) if gate is not None else (q, k, v)
    argnums = tuple(range(len(args)))
    wrap = (lambda fn: loss(fn)) if gate is not None else (lambda fn: lambda q, k, v: loss(fn)(q, k, v, None))
    ours = jax.grad(wrap(gated_attention_reference), argnums=argnums)(*args)
    expected = jax.grad(wrap(plain_attention), argnums=argnums)(*args)
    np.testing.assert_allclose(
        gated_attention_reference(q, k, v, gate, **options),
        plain_attention(q, k, v, gate, **options),
        rtol=1e-5,
        atol=1e-6,
    )
    for got, want in zip(ours, expected, strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gradient_of_a_custom_scale_and_under_jit():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32) for _ in range(3))

    def loss(fn, q, k, v):
        return jnp.sum(jnp.tanh(fn(q, k, v, None, causal=True, segment_ids=None, window=None, scale=0.3)))

    ours = jax.jit(jax.grad(lambda *a: loss(gated_attention_reference, *a), argnums=(0, 1, 2)))(q, k, v)
    expected = jax.grad(lambda *a: loss(plain_attention, *a), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

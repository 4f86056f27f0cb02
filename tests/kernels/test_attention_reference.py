"""The XLA attention reference against a direct numpy implementation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.kernels import gated_attention


def numpy_attention(q, k, v, gate, causal, segment_ids, scale):
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    out = np.zeros((batch, q_len, heads, dim))
    for b in range(batch):
        for h in range(heads):
            kh = h // (heads // kv_heads)
            for i in range(q_len):
                allowed = np.ones(kv_len, bool)
                if causal:
                    allowed &= np.arange(kv_len) <= i + kv_len - q_len
                if segment_ids is not None:
                    allowed &= segment_ids[b] == segment_ids[b, i]
                if not allowed.any():
                    continue
                scores = (k[b, :, kh] @ q[b, i, h]) * scale
                scores = np.where(allowed, scores, -np.inf)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, i, h] = weights @ v[b, :, kh]
    if gate is not None:
        g = gate if gate.ndim == 4 else gate[..., None]
        out = out / (1 + np.exp(-g))
    return out


@settings(max_examples=25, deadline=None)
@given(
    seq=st.integers(1, 9),
    heads_kv=st.sampled_from([(1, 1), (4, 2), (4, 1), (2, 2)]),
    gate_kind=st.sampled_from(["none", "headwise", "elementwise"]),
    causal=st.booleans(),
    segments=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_reference_matches_numpy(seq, heads_kv, gate_kind, causal, segments, seed):
    rng = np.random.default_rng(seed)
    heads, kv_heads, dim, batch = *heads_kv, 8, 2
    q = rng.normal(size=(batch, seq, heads, dim)).astype(np.float32)
    k = rng.normal(size=(batch, seq, kv_heads, dim)).astype(np.float32)
    v = rng.normal(size=(batch, seq, kv_heads, dim)).astype(np.float32)
    gate = {
        "none": None,
        "headwise": rng.normal(size=(batch, seq, heads)),
        "elementwise": rng.normal(size=(batch, seq, heads, dim)),
    }[gate_kind]
    gate = None if gate is None else gate.astype(np.float32)
    segment_ids = np.sort(rng.integers(0, 3, size=(batch, seq)), axis=1) if segments else None
    got = gated_attention(q, k, v, gate, causal=causal, segment_ids=segment_ids, impl="xla")
    want = numpy_attention(q, k, v, gate, causal, segment_ids, dim**-0.5)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_zero_gate_logits_halve_the_output():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(1, 5, 2, 4)).astype(np.float32) for _ in range(3))
    plain = gated_attention(q, k, v, impl="xla")
    gated = gated_attention(q, k, v, np.zeros((1, 5, 2), np.float32), impl="xla")
    np.testing.assert_allclose(np.asarray(gated), 0.5 * np.asarray(plain), rtol=1e-6)


def test_unknown_impl_is_rejected():
    x = np.zeros((1, 2, 1, 4), np.float32)
    with pytest.raises(ValueError, match="impl must be one of"):
        gated_attention(x, x, x, impl="magic")


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_matches_numpy(causal):
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 7, 2, 4)).astype(np.float32) for _ in range(3))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    distance = np.arange(7)[:, None] - np.arange(7)[None, :]
    allowed = (np.abs(distance) < 3) & ((distance >= 0) if causal else True)
    weights = np.exp(np.where(allowed, scores, -np.inf) - np.where(allowed, scores, -np.inf).max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = np.einsum("bhqk,bkhd->bqhd", weights, v)
    for impl in ("xla", "auto"):  # the fused kernels refuse a window (test_kernel_support)
        got = gated_attention(q, k, v, causal=causal, window=3, impl=impl)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)

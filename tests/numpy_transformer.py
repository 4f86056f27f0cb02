"""An independent float64 numpy implementation of the gated transformer, for exactness tests.

Written from the formulas, not from the jdistill code: RMSNorm (Zhang & Sennrich 2019), half-split RoPE (Su et
al. 2021, as in Llama), grouped-query causal softmax attention, the SDPA output gate of Qiu et al. 2025 ("Gated
Attention for LLMs": Y' = Y * sigmoid(X W_theta), G1) or the value gate (G2), the tanh-GELU MLP, and the Hinton
KD objective. The only thing taken from jdistill is its parameter layout (`to_pure_dict()` of the model state):
the query projection and W_theta are fused column-wise ([W_q | W_theta]); the key/value projection is
[W_k | W_v] with kv_heads * head_dim columns each.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def rope(x, theta, rotary_dim):
    """Rotate the first `rotary_dim` channels of `x [batch, seq, heads, dim]` at positions 0..seq-1: the pair
    (x_i, x_{i + r/2}) turns by the angle pos * theta^(-2i/r)."""
    if rotary_dim == 0:
        return x
    seq, half = x.shape[1], rotary_dim // 2
    angle = np.arange(seq)[:, None] * theta ** (-2.0 * np.arange(half) / rotary_dim)  # [seq, half]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)


def softmax_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(d)) v per head, `q [b, m, heads, d]`, `k, v [b, n, kv_heads, d]`; query head h reads
    key/value head h // (heads / kv_heads); causal masking aligns the last query with the last key."""
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    out = np.zeros((batch, q_len, heads, dim))
    for h in range(heads):
        kh = h // (heads // kv_heads)
        scores = np.einsum("bmd,bnd->bmn", q[:, :, h], k[:, :, kh]) / np.sqrt(dim)
        if causal:
            allowed = np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + (kv_len - q_len)
            scores = np.where(allowed[None], scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[:, :, h] = np.einsum("bmn,bnd->bmd", weights, v[:, :, kh])
    return out


def gated_attention_layer(p, x, cfg, *, causal: bool, use_rope: bool):
    """The whole attention layer on `x [batch, seq, d_model]` with parameters `p` (the layer's pure dict)."""
    batch, seq, _ = x.shape
    heads, kv_heads, dim = cfg.num_heads, cfg.resolved_kv_heads, cfg.resolved_head_dim
    w_fused = np.asarray(p["query_and_gate"]["kernel"], np.float64)
    w_q, w_theta = w_fused[:, : heads * dim], w_fused[:, heads * dim :]
    w_kv = np.asarray(p["key_value"]["kernel"], np.float64)
    q = (x @ w_q).reshape(batch, seq, heads, dim)
    k = (x @ w_kv[:, : kv_heads * dim]).reshape(batch, seq, kv_heads, dim)
    v = (x @ w_kv[:, kv_heads * dim :]).reshape(batch, seq, kv_heads, dim)
    if cfg.qk_norm:
        q = rms_norm(q, np.asarray(p["query_norm"]["scale"], np.float64), cfg.norm_eps)
        k = rms_norm(k, np.asarray(p["key_norm"]["scale"], np.float64), cfg.norm_eps)
    if use_rope:
        q, k = rope(q, cfg.rope_theta, cfg.rotary_dim), rope(k, cfg.rope_theta, cfg.rotary_dim)
    gate_heads = heads if cfg.gate_position == "sdpa_output" else kv_heads
    if cfg.gate != "none":
        gate = sigmoid(x @ w_theta)  # sigmoid(X W_theta)
        gate = gate.reshape(batch, seq, gate_heads, 1 if cfg.gate == "headwise" else dim)
        if cfg.gate_position == "value":
            v = v * gate  # G2: V' = V * sigmoid(X W_theta)
    y = softmax_attention(q, k, v, causal)
    if cfg.gate != "none" and cfg.gate_position == "sdpa_output":
        y = y * gate  # G1: Y' = Y * sigmoid(X W_theta)
    return y.reshape(batch, seq, heads * dim) @ np.asarray(p["output"]["kernel"], np.float64)


def lm_logits(p, tokens, cfg):
    """Logits `[batch, seq, vocab]` of a pre-norm decoder LM (dense tanh-GELU MLP, untied head)."""
    f = lambda x: np.asarray(x, np.float64)
    h = f(p["embed"]["embedding"])[tokens]
    for index in range(cfg.num_layers):
        block = p["blocks"][index]
        normed = rms_norm(h, f(block["attention_norm"]["scale"]), cfg.norm_eps)
        h = h + gated_attention_layer(block["attention"], normed, cfg, causal=True, use_rope=True)
        normed = rms_norm(h, f(block["mlp_norm"]["scale"]), cfg.norm_eps)
        mlp = block["mlp"]
        hidden = gelu_tanh(normed @ f(mlp["up"]["kernel"]) + f(mlp["up"]["bias"]))
        h = h + hidden @ f(mlp["down"]["kernel"]) + f(mlp["down"]["bias"])
    h = rms_norm(h, f(p["final_norm"]["scale"]), cfg.norm_eps)
    return h @ f(p["head"]["kernel"]) + f(p["head"]["bias"])


def hinton_kd_loss(student_logits, teacher_logits, labels, mask, *, temperature, distill_weight, label_weight):
    """mean over valid tokens of distill_weight * T^2 * KL(p_t || p_s) at T + label_weight * CE(y, s) at T = 1."""
    log_ps, log_pt = log_softmax(student_logits / temperature), log_softmax(teacher_logits / temperature)
    kl = np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1)
    ce = -np.take_along_axis(log_softmax(student_logits), labels[..., None], axis=-1)[..., 0]
    per_token = distill_weight * temperature**2 * kl + label_weight * ce
    return float(np.sum(per_token * mask) / np.sum(mask))


def randomize(pure_dict, rng, scale=0.5):
    """The same nested dict with every leaf replaced by float32 normal noise (norm scales around 1), so no
    parameter sits at a special value (a zero gate, a unit norm) that would hide a wrong formula."""

    def draw(path, leaf):
        shape = np.shape(leaf)
        if path and path[-1] == "scale":
            return (1.0 + 0.3 * rng.normal(size=shape)).astype(np.float32)
        return (scale * rng.normal(size=shape)).astype(np.float32)

    def walk(node, path):
        if isinstance(node, dict):
            return {key: walk(value, path + (key,)) for key, value in node.items()}
        return draw(path, node)

    return walk(pure_dict, ())

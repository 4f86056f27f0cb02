"""Multi-head self-attention with the SDPA output gate (Qiu et al. 2025, "Gated Attention for Large Language
Models: Non-linearity, Sparsity, and Attention-Sink-Free").

The gate is `sigmoid(X W_theta)` with X the normalised hidden state that also feeds q/k/v. Its weights are
fused into the query projection (one matmul produces q and the gate logits). Positions:
  - "sdpa_output" (G1): Y' = Y * sigmoid(X W_theta) after attention; headwise (one scalar per head) or
    elementwise (one per channel). Applied inside `jdistill.kernels.gated_attention` so fused kernels can
    put it in their epilogue.
  - "value" (G2): V' = V * sigmoid(X W_theta) before attention (per kv head, or per kv channel).
With W_theta = 0 every gate is sigmoid(0) = 1/2, so a G1-gated layer outputs half the ungated one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
from flax import nnx

from jdistill.kernels import gated_attention
from jdistill.nn.attention_stats import first_token_attention_share
from jdistill.nn.head_gates import apply_head_gates
from jdistill.nn.kv_cache import KVCache, cached_attention
from jdistill.nn.mlp_core import linear
from jdistill.nn.norms import RMSNorm
from jdistill.nn.params import dense
from jdistill.nn.rope import apply_rope

if TYPE_CHECKING:  # models import nn, not the other way round
    from jdistill.models.config import ModelConfig


def _apply(layer: nnx.Linear, x):
    """A bias-free `nnx.Linear` through `linear` (same values; an explicit backward, faster on CPU)."""
    x, kernel = layer.promote_dtype((x, layer.kernel[...]), dtype=layer.dtype)
    return linear(x, kernel)


def _gate_width(config: ModelConfig) -> int:
    heads = config.num_heads if config.gate_position == "sdpa_output" else config.resolved_kv_heads
    if config.gate == "none":
        return 0
    return heads if config.gate == "headwise" else heads * config.resolved_head_dim


class GatedSelfAttention(nnx.Module):
    """Self-attention over `x [batch, seq, d_model]` with an optional sigmoid gate; returns the same shape."""

    def __init__(self, config: ModelConfig, *, causal: bool, rope: bool, rngs: nnx.Rngs):
        self.config = config
        self.causal = causal
        self.rope = rope
        heads, kv_heads, head_dim = config.num_heads, config.resolved_kv_heads, config.resolved_head_dim
        init = nnx.initializers.lecun_normal()
        dtype = jnp.dtype(config.dtype)
        self.gate_width = _gate_width(config)
        linear = dict(use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs)
        self.query_and_gate = dense(config.d_model, heads * head_dim + self.gate_width, ("embed", "heads"), **linear)
        self.key_value = dense(config.d_model, 2 * kv_heads * head_dim, ("embed", "heads"), **linear)
        self.output = dense(heads * head_dim, config.d_model, ("heads", "embed"), **linear)
        if config.qk_norm:
            self.query_norm = RMSNorm(head_dim, eps=config.norm_eps, zero_centered=config.norm_zero_centered)
            self.key_norm = RMSNorm(head_dim, eps=config.norm_eps, zero_centered=config.norm_zero_centered)

    def _project(self, x, positions):
        """q `[batch, seq, heads, head_dim]`, k, v `[batch, seq, kv_heads, head_dim]`, output gate or None."""
        cfg = self.config
        batch, seq, _ = x.shape
        heads, kv_heads, head_dim = cfg.num_heads, cfg.resolved_kv_heads, cfg.resolved_head_dim
        fused = _apply(self.query_and_gate, x)
        q = fused[..., : heads * head_dim].reshape(batch, seq, heads, head_dim)
        gate_logits = fused[..., heads * head_dim :]
        k, v = jnp.split(_apply(self.key_value, x).reshape(batch, seq, 2 * kv_heads, head_dim), 2, axis=2)
        if cfg.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        if self.rope:
            theta, dim, scaling = cfg.rope_theta, cfg.rotary_dim, cfg.rope_scaling
            q = apply_rope(q, positions, theta=theta, rotary_dim=dim, scaling=scaling)
            k = apply_rope(k, positions, theta=theta, rotary_dim=dim, scaling=scaling)
        gate = None
        if self.gate_width:
            gate_heads = heads if cfg.gate_position == "sdpa_output" else kv_heads
            shape = (batch, seq, gate_heads) if cfg.gate == "headwise" else (batch, seq, gate_heads, head_dim)
            gate = gate_logits.reshape(shape)
            if cfg.gate_position == "value":
                gate_v = gate[..., None] if cfg.gate == "headwise" else gate
                v = v * nnx.sigmoid(gate_v.astype(jnp.float32)).astype(v.dtype)
                gate = None
        return q, k, v, gate

    def __call__(self, x, *, positions=None, segment_ids=None, stats: dict | None = None, head_gates=None):
        """`stats`, when a dict is given, receives `first_token_share` and (gated layers) `mean_gate`;
        `head_gates [heads]` scales each head's output (causal head gating, `jdistill.nn.head_gates`)."""
        batch, seq, _ = x.shape
        q, k, v, gate = self._project(x, positions)
        out = gated_attention(
            q,
            k,
            v,
            gate,
            causal=self.causal,
            segment_ids=segment_ids,
            window=self.config.sliding_window,
            impl=self.config.attention_impl,
        )
        if head_gates is not None:
            out = apply_head_gates(out, head_gates)
        if stats is not None:
            stats["first_token_share"] = first_token_attention_share(q, k, causal=self.causal, segment_ids=segment_ids)
            if gate is not None:
                stats["mean_gate"] = jnp.mean(nnx.sigmoid(gate.astype(jnp.float32)))
        return _apply(self.output, out.reshape(batch, seq, -1))

    def fill_cache(self, x, *, positions, cache: KVCache) -> KVCache:
        """`cache` with x's keys and values written at `positions` and nothing attended: a block that a token
        skipped still leaves its keys and values for later tokens (CALM's state propagation)."""
        _, k, v, _ = self._project(x, positions)
        return cache.write(k, v, positions)

    def decode(self, x, *, positions, cache: KVCache):
        """Attend from `x [batch, seq, d_model]` at `positions [batch, seq]` over `cache` updated with x's keys
        and values (causal by position); returns (output, new cache). The XLA path; used by generation."""
        batch, seq, _ = x.shape
        q, k, v, gate = self._project(x, positions)
        cache = cache.write(k, v, positions)
        out = cached_attention(q, cache, gate, positions, window=self.config.sliding_window)
        return self.output(out.reshape(batch, seq, -1)), cache

"""Gated DeltaNet token mixer (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
Rule"), laid out as in Qwen3-Next's linear-attention layers (docs/methods.md#gated-deltanet).

    [q k v z] = x W_qkvz (grouped per key head),  [b a] = x W_ba
    q, k, v  <- silu(causal depthwise conv_4([q k v]))
    q <- l2norm(q) / sqrt(d_k),  k <- l2norm(k),  beta = sigmoid(b),  g = -exp(A_log) * softplus(a + dt_bias)
    o = gated_delta_rule(q, k, v, g, beta)          (jdistill.kernels; chunked WY form or Pallas)
    y = W_out [gated_rmsnorm(o, z)]                  (rmsnorm(o) * w * silu(z), per value head)

With more value than key heads, each query/key head serves `value_heads // key_heads` consecutive value heads.
Decoding carries the last `conv_kernel - 1` conv inputs and the `[heads, d_k, d_v]` state (`DeltaNetState`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jdistill.kernels import gated_delta_rule
from jdistill.nn.norms import GatedRMSNorm
from jdistill.nn.params import dense, param

L2_EPS = 1e-6


@struct.dataclass
class DeltaNetState:
    conv: jax.Array  # [batch, conv_kernel - 1, conv_dim]: the latest conv inputs
    recurrent: jax.Array  # [batch, value_heads, key_head_dim, value_head_dim], float32


def l2_normalize(x, eps: float = L2_EPS):
    """`x / sqrt(sum(x^2) + eps)` over the last axis, in float32 (as the FLA kernels do)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def causal_depthwise_conv(x, weight, history=None):
    """`out[t] = sum_j weight[j] * x[t - (K - 1) + j]` per channel; x `[batch, seq, channels]`, weight `[K, channels]`.

    `history [batch, K - 1, channels]` holds the inputs before x (zeros when None). Returns (out, new history)."""
    kernel = weight.shape[0]
    if history is None:
        history = jnp.zeros((x.shape[0], kernel - 1, x.shape[2]), x.dtype)
    padded = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    seq = x.shape[1]
    out = sum(padded[:, j : j + seq] * weight[j].astype(x.dtype) for j in range(kernel))
    return out, padded[:, seq:]


class GatedDeltaNet(nnx.Module):
    """`x [batch, seq, d_model] -> [batch, seq, d_model]`, causal."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        self.config = config
        heads_k, heads_v = config.linear_key_heads, config.linear_value_heads
        dim_k, dim_v = config.linear_key_head_dim, config.linear_value_head_dim
        if heads_v % heads_k:
            raise ValueError(f"linear_value_heads ({heads_v}) must be a multiple of linear_key_heads ({heads_k})")
        self.key_dim, self.value_dim = heads_k * dim_k, heads_v * dim_v
        self.conv_dim = 2 * self.key_dim + self.value_dim
        dtype = jnp.dtype(config.dtype)
        linear = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.in_proj_qkvz = dense(config.d_model, 2 * self.key_dim + 2 * self.value_dim, ("embed", "heads"), **linear)
        self.in_proj_ba = dense(config.d_model, 2 * heads_v, ("embed", "heads"), **linear)
        bound = config.linear_conv_kernel**-0.5
        self.conv_weight = param(
            jax.random.uniform(rngs.params(), (config.linear_conv_kernel, self.conv_dim), minval=-bound, maxval=bound),
            ("conv", "heads"),
        )
        self.dt_bias = param(jnp.ones((heads_v,), jnp.float32), ("heads",))
        self.A_log = param(jnp.log(jax.random.uniform(rngs.params(), (heads_v,), minval=0.01, maxval=16.0)), ("heads",))
        self.norm = GatedRMSNorm(dim_v, eps=config.norm_eps)
        self.out_proj = dense(self.value_dim, config.d_model, ("heads", "embed"), **linear)

    def _split(self, x):
        """Qwen3-Next's grouped layout -> q, k `[B, T, Hk, Dk]`, v, z `[B, T, Hv, Dv]`, b, a `[B, T, Hv]`."""
        cfg = self.config
        batch, seq, _ = x.shape
        heads_k, group = cfg.linear_key_heads, cfg.linear_value_heads // cfg.linear_key_heads
        dim_k, dim_v = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        qkvz = self.in_proj_qkvz(x).reshape(batch, seq, heads_k, 2 * dim_k + 2 * group * dim_v)
        q, k, v, z = jnp.split(qkvz, [dim_k, 2 * dim_k, 2 * dim_k + group * dim_v], axis=-1)
        b, a = jnp.split(self.in_proj_ba(x).reshape(batch, seq, heads_k, 2 * group), 2, axis=-1)
        heads_v = cfg.linear_value_heads
        return (
            q,
            k,
            v.reshape(batch, seq, heads_v, dim_v),
            z.reshape(batch, seq, heads_v, dim_v),
            b.reshape(batch, seq, heads_v),
            a.reshape(batch, seq, heads_v),
        )

    def _mix(self, x, state: DeltaNetState | None):
        cfg = self.config
        batch, seq, _ = x.shape
        q, k, v, z, b, a = self._split(x)
        mixed = jnp.concatenate([q.reshape(batch, seq, -1), k.reshape(batch, seq, -1), v.reshape(batch, seq, -1)], -1)
        mixed, conv_history = causal_depthwise_conv(mixed, self.conv_weight[...], None if state is None else state.conv)
        mixed = jax.nn.silu(mixed)
        q, k, v = jnp.split(mixed, [self.key_dim, 2 * self.key_dim], axis=-1)
        group = cfg.linear_value_heads // cfg.linear_key_heads
        q = jnp.repeat(q.reshape(batch, seq, cfg.linear_key_heads, -1), group, axis=2)
        k = jnp.repeat(k.reshape(batch, seq, cfg.linear_key_heads, -1), group, axis=2)
        q = l2_normalize(q) * cfg.linear_key_head_dim**-0.5
        k = l2_normalize(k)
        v = v.reshape(batch, seq, cfg.linear_value_heads, -1)
        beta = jax.nn.sigmoid(b.astype(jnp.float32))
        g = -jnp.exp(self.A_log[...]) * jax.nn.softplus(a.astype(jnp.float32) + self.dt_bias[...])
        impl = "recurrent" if state is not None and seq == 1 else cfg.delta_rule_impl
        out, recurrent = gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=None if state is None else state.recurrent,
            output_final_state=True,
            impl=impl,
        )
        out = self.norm(out, z)
        return self.out_proj(out.reshape(batch, seq, self.value_dim)), DeltaNetState(conv_history, recurrent)

    def __call__(self, x, **unused):
        return self._mix(x, None)[0]

    def init_state(self, batch: int) -> DeltaNetState:
        cfg = self.config
        return DeltaNetState(
            jnp.zeros((batch, cfg.linear_conv_kernel - 1, self.conv_dim), jnp.dtype(cfg.dtype)),
            jnp.zeros((batch, cfg.linear_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim), jnp.float32),
        )

    def decode(self, x, *, state: DeltaNetState):
        """Continue from `state` with `x [batch, seq, d_model]` (every row advances by seq tokens)."""
        return self._mix(x, state)

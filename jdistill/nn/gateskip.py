"""GateSkip residual gates (Laitenberger et al. 2025, "GateSkip: Enabling Token-Wise Layer Skipping via
Residual Gates").

Each residual branch f (attention or MLP) gets a sigmoid-linear gate computed from the branch input with the
gradient stopped:

    g = sigmoid(W stopgrad(h) + b),    h_out = h + g * f(h)

with b initialised to 5 (g ~ sigmoid(5) ~ 0.993, so the gated model starts as the ungated one) and
W ~ N(0, 0.01^2). The gate is a vector, one value per channel (`per_channel=True`, the paper's default); the
token's importance is the mean of its gate vector. `per_channel=False` gives one scalar per token.
Training adds `gate_sparsity_loss` = 0.01 * mean(g^2). At inference, tokens whose mean gate is under the
layer's budget quantile skip the branch (`skip_mask`, `skip_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.nn.params import dense

GATE_BIAS_INIT = 5.0
GATE_WEIGHT_STDDEV = 0.01
SPARSITY_WEIGHT = 0.01


class ResidualGate(nnx.Module):
    """Gate for one residual branch; `h`, `branch_out` `[..., d_model]`."""

    def __init__(self, d_model: int, *, per_channel: bool = True, dtype=None, rngs: nnx.Rngs):
        width = d_model if per_channel else 1
        self.projection = dense(
            d_model,
            width,
            ("embed", "gate"),
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.initializers.normal(GATE_WEIGHT_STDDEV),
            bias_init=nnx.initializers.constant(GATE_BIAS_INIT),
        )

    def gate(self, h):
        """`sigmoid(W stopgrad(h) + b)` in float32: `[..., d_model]` (or `[..., 1]` per token)."""
        logits = self.projection(jax.lax.stop_gradient(h))
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    def __call__(self, h, branch_out):
        """Returns `(h + g * branch_out, g)`; keep g for the sparsity loss and the skip budget."""
        gate = self.gate(h)
        return h + (gate * branch_out).astype(h.dtype), gate


def mean_gate(gate):
    """A token's importance: the mean of its gate vector, `[..., width] -> [...]`."""
    return jnp.mean(gate, axis=-1)


def gate_sparsity_loss(gates: Sequence | jax.Array, weight: float = SPARSITY_WEIGHT):
    """`weight * mean(g^2)`; for a sequence of per-branch gates, the mean over branches of each branch's mean."""
    if isinstance(gates, jax.Array):
        return weight * jnp.mean(jnp.square(gates))
    return weight * jnp.mean(jnp.stack([jnp.mean(jnp.square(g)) for g in gates]))


def skip_mask(mean_gate_per_token, budget_quantile: float, *, axis=None):
    """True where a token skips the branch: its mean gate is under the `budget_quantile` quantile of the mean
    gates along `axis` (None: over every token given, e.g. the whole batch for this layer).

    `budget_quantile` in [0, 1] (a Python float, or traced under jit) is about the fraction of tokens skipped
    (within one token); 0 skips none.
    """
    if isinstance(budget_quantile, (int, float)) and not 0.0 <= budget_quantile <= 1.0:
        raise ValueError(f"budget_quantile must be in [0, 1], got {budget_quantile!r}")
    threshold = jnp.quantile(mean_gate_per_token, budget_quantile, axis=axis, keepdims=True)
    return mean_gate_per_token < threshold


def skip_tokens(h, h_out, skip):
    """The residual stream after a branch with skipping: `h` where `skip` `[...]`, else `h_out` `[..., d]`."""
    return jnp.where(skip[..., None], h, h_out)

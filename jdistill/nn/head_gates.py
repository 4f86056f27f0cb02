"""Causal head gating (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of Attention
Heads in Transformers").

On a frozen model, every attention head's output is multiplied by a gate G = sigmoid(logit) (one per layer and
head), and only the logits are fitted, to

    L = NLL - lam * sum(logit)

first with lam = 0, then with lam > 0 (which rewards keeping heads: G+) and lam < 0 (which rewards removing
them: G-). A head is
  - facilitating when G+ ~ 1 and G- ~ 1 (kept even when removal is rewarded),
  - interfering when G+ ~ 0 and G- ~ 0 (removed even when keeping is rewarded),
  - irrelevant when G+ ~ 1 and G- ~ 0 (it follows the regulariser),
  - unclassified otherwise (G+ ~ 0 and G- ~ 1, which a converged fit should not produce).

The regulariser is linear in the logit, so its gradient never vanishes: under lam != 0 the logits of heads the
NLL does not hold in place keep moving for as long as one trains; fit for a fixed number of steps.
Logits start at `INITIAL_LOGIT` = 3 (G ~ 0.95): close to the ungated model while the NLL gradient through the
sigmoid is still large enough to move them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.nn.params import param

INITIAL_LOGIT = 3.0
HEAD_ROLES = ("facilitating", "interfering", "irrelevant", "unclassified")


class HeadGates(nnx.Module):
    """Per-head gate logits `[num_layers, num_heads]`; `gates()` is sigmoid(logits) in float32."""

    def __init__(self, num_layers: int, num_heads: int, *, initial_logit: float = INITIAL_LOGIT):
        self.logits = param(jnp.full((num_layers, num_heads), initial_logit, jnp.float32), ("layers", "heads"))

    def gates(self, layer: int | None = None):
        """All gates `[num_layers, num_heads]`, or one layer's `[num_heads]`."""
        logits = self.logits[...] if layer is None else self.logits[...][layer]
        return jax.nn.sigmoid(logits)

    def __call__(self, head_outputs, layer: int):
        """Gate one layer's per-head attention outputs `[batch, seq, num_heads, head_dim]` (before the output
        projection)."""
        return apply_head_gates(head_outputs, self.gates(layer))


def apply_head_gates(head_outputs, gates):
    """`head_outputs [..., num_heads, head_dim] * gates [num_heads]`, in the outputs' dtype."""
    return head_outputs * gates[:, None].astype(head_outputs.dtype)


def head_gating_objective(nll, gate_logits, lam: float):
    """`L = NLL - lam * sum(logit)`: lam = 0 plain fit, lam > 0 for G+, lam < 0 for G-."""
    return nll - lam * jnp.sum(gate_logits)


def classify_heads(g_plus, g_minus, threshold: float = 0.5) -> np.ndarray:
    """Label each head from its fitted gates G+ (lam > 0) and G- (lam < 0), both `[num_layers, num_heads]`.

    A gate above `threshold` counts as ~1, otherwise ~0. Returns a string array of `HEAD_ROLES` entries.
    """
    plus_on = np.asarray(g_plus) > threshold
    minus_on = np.asarray(g_minus) > threshold
    if plus_on.shape != minus_on.shape:
        raise ValueError(f"g_plus and g_minus must have the same shape, got {plus_on.shape} and {minus_on.shape}")
    labels = np.full(plus_on.shape, "unclassified", dtype=object)
    labels[plus_on & minus_on] = "facilitating"
    labels[~plus_on & ~minus_on] = "interfering"
    labels[plus_on & ~minus_on] = "irrelevant"
    return labels.astype(str)

"""Multi-exit heads (MoSE-style hierarchical multi-exit self-distillation;
docs/methods.md#multi-exit-self-distillation).

One head is shared by all exits. Before it, the exit's hidden state is RMS-normalised (a shared RMSNorm: the
mid-stack residual stream is not normalised like the final one) and a small learned embedding of the exit's
layer index is concatenated:

    logits_i = W [rmsnorm(h_i) ; e(layer_i)] + b

so the shared head can tell the exits apart. Exit i reads only hidden state i, which is what makes truncating
the model above an exit leave that exit's output unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from jdistill.nn.norms import RMSNorm
from jdistill.nn.params import dense, embedding


def _validate_exit_layers(exit_layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    layers = tuple(int(layer) for layer in exit_layers)
    if not layers:
        raise ValueError("exit_layers must name at least one layer")
    if list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] > num_layers:
        raise ValueError(f"exit_layers must be increasing layer numbers in 1..{num_layers}, got {list(layers)}")
    return layers


class ExitHeads(nnx.Module):
    """Shared exit head over `[..., d_model]` hidden states at `exit_layers` (1-based block numbers, e.g.
    (4, 9, 18, 27, 36) of 36); logits `[..., num_outputs]` in float32."""

    def __init__(
        self,
        d_model: int,
        num_outputs: int,
        exit_layers: Sequence[int],
        num_layers: int,
        *,
        embed_dim: int = 8,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.exit_layers = _validate_exit_layers(exit_layers, num_layers)
        self.num_layers = num_layers
        self.norm = RMSNorm(d_model)
        # row i is block i; row 0 (the embeddings) is unused, so that rows are block numbers
        self.layer_embedding = embedding(num_layers + 1, embed_dim, ("layers", "layer_embed"), dtype=dtype, rngs=rngs)
        self.head = dense(d_model + embed_dim, num_outputs, ("embed", "vocab"), dtype=dtype, rngs=rngs)

    def exit_logits(self, hidden, layer: int):
        """Logits of the exit at block `layer` from that block's output `hidden [..., d_model]`."""
        embedding = self.layer_embedding(jnp.asarray(layer, jnp.int32))
        embedding = jnp.broadcast_to(embedding.astype(hidden.dtype), hidden.shape[:-1] + embedding.shape)
        features = jnp.concatenate([self.norm(hidden), embedding], axis=-1)
        return self.head(features).astype(jnp.float32)

    def __call__(self, hidden_states: Sequence) -> tuple:
        """One hidden state per exit, in `exit_layers` order -> a tuple of exit logits."""
        if len(hidden_states) != len(self.exit_layers):
            raise ValueError(
                f"expected {len(self.exit_layers)} hidden states (one per exit layer "
                f"{list(self.exit_layers)}), got {len(hidden_states)}"
            )
        return tuple(
            self.exit_logits(hidden, layer) for hidden, layer in zip(hidden_states, self.exit_layers, strict=True)
        )

    def from_all_layers(self, all_hidden_states: Sequence) -> tuple:
        """Pick the exits from the model's `num_layers + 1` hidden states (embeddings first, then each block)."""
        if len(all_hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"expected {self.num_layers + 1} hidden states (embeddings + {self.num_layers} blocks), "
                f"got {len(all_hidden_states)}"
            )
        return self([all_hidden_states[layer] for layer in self.exit_layers])

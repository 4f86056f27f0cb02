"""What every jdistill model returns."""

from __future__ import annotations

from typing import Any

from flax import struct


@struct.dataclass
class ModelOutput:
    """`logits`: [batch, num_classes] (classifier) or [batch, seq, vocab] (LM), float32.

    `hidden_states`: per-layer residual streams (embedding output first) when requested, else None.
    `exits`: logits of intermediate exits (multi-exit models), else None.
    `aux`: named extras (attention statistics, auxiliary losses).
    `features`: the final-normed representation the head reads (`[batch, d_model]` pooled for classifiers,
    `[batch, seq, d_model]` for LMs); with `model(..., logits=False)` only this is computed (logits None), so
    large-vocabulary objectives can chunk the head (`jdistill.losses.chunked`).
    """

    logits: Any
    hidden_states: tuple | None = None
    exits: tuple | None = None
    aux: dict = struct.field(default_factory=dict)
    features: Any = None

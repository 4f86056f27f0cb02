"""MLP activations by name (the gated-range family joins these in the model-family issue)."""

from __future__ import annotations

import jax

ACTIVATIONS = {"gelu": jax.nn.gelu, "silu": jax.nn.silu}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]

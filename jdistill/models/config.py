"""Model configuration: one frozen dataclass drives every transformer jdistill builds."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A gated transformer: an encoder classifier over image patches, or a decoder LM over tokens.

    Attributes:
      kind: "classifier" (bidirectional encoder, pooled head) or "lm" (causal decoder, per-token head).
      num_layers, d_model, num_heads, mlp_dim: the usual sizes; head_dim defaults to d_model // num_heads.
      num_kv_heads: key/value heads for grouped-query attention (None: equal to num_heads).
      gate: SDPA output gate (methods.md item 22): "none", "headwise" (one scalar per head) or
        "elementwise" (one per channel).
      gate_position: "sdpa_output" (G1, after attention; the default) or "value" (G2, on the values).
      activation: MLP activation, "gelu" or "silu".
      patch_size, image_size, num_channels, num_classes, pooling: classifier input and head.
      vocab_size, max_seq_len, rope_theta, tie_embeddings: LM input and head.
      attention_impl: passed to `jdistill.kernels.gated_attention` ("auto", "xla", ...).
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
    """

    kind: Literal["classifier", "lm"] = "classifier"
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int = 128
    gate: Literal["none", "headwise", "elementwise"] = "headwise"
    gate_position: Literal["sdpa_output", "value"] = "sdpa_output"
    activation: Literal["gelu", "silu"] = "gelu"
    patch_size: int = 2
    image_size: int = 8
    num_channels: int = 1
    num_classes: int = 10
    pooling: Literal["mean", "cls"] = "mean"
    vocab_size: int = 256
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    attention_impl: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> list[tuple[str, str]]:
        """Problems as (field, what was expected); empty when the config is consistent."""
        problems = []
        for name in ("num_layers", "d_model", "num_heads", "mlp_dim", "patch_size", "image_size",
                     "num_channels", "num_classes", "vocab_size", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append((name, "a positive integer"))
        if self.head_dim is None and self.num_heads >= 1 and self.d_model % self.num_heads:
            problems.append(("num_heads", f"a divisor of d_model={self.d_model} (or set head_dim)"))
        if self.num_kv_heads is not None and self.num_heads % max(self.num_kv_heads, 1):
            problems.append(("num_kv_heads", f"a divisor of num_heads={self.num_heads}"))
        if self.kind == "classifier" and self.patch_size >= 1 and self.image_size % self.patch_size:
            problems.append(("patch_size", f"a divisor of image_size={self.image_size}"))
        return problems

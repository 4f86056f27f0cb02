"""Attention cores: XLA reference paths now; fused Pallas kernels slot in behind the same `impl` argument."""

from jdistill.kernels.attention import attention_mask, gated_attention, gated_attention_reference

__all__ = ["attention_mask", "gated_attention", "gated_attention_reference"]

"""Attention cores: the XLA reference, fused Pallas flash kernels (GPU, TPU) behind `impl`, the cuDNN path, and
the gated delta rule (recurrent and chunked forms)."""

from jdistill.kernels.attention import attention_mask, gated_attention, gated_attention_reference
from jdistill.kernels.delta_rule import gated_delta_rule

__all__ = ["attention_mask", "gated_attention", "gated_attention_reference", "gated_delta_rule"]

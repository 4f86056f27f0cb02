"""Attention cores: the XLA reference, fused Pallas flash kernels (GPU, TPU) behind `impl`, the cuDNN path, and
the gated delta rule (recurrent and chunked forms)."""

from jdistill.kernels.attention import (
    attention_impl_problem,
    attention_mask,
    gated_attention,
    gated_attention_reference,
)
from jdistill.kernels.delta_rule import delta_rule_impl_problem, gated_delta_rule
from jdistill.kernels.support import KernelUnsupportedError

__all__ = [
    "KernelUnsupportedError",
    "attention_impl_problem",
    "attention_mask",
    "delta_rule_impl_problem",
    "gated_attention",
    "gated_attention_reference",
    "gated_delta_rule",
]

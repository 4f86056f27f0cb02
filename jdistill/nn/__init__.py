"""Flax NNX layers: gated attention, MLPs and activations, norms, RoPE, residual/head gates, exits, ReGLA."""

from jdistill.nn.activations import ExpandedGatingActivation, get_activation, golu, xatlu, xgelu, xsilu
from jdistill.nn.attention import GatedSelfAttention
from jdistill.nn.exits import ExitHeads
from jdistill.nn.gateskip import ResidualGate, gate_sparsity_loss, skip_mask
from jdistill.nn.head_gates import HeadGates, classify_heads, head_gating_objective
from jdistill.nn.kv_cache import KVCache
from jdistill.nn.mlp import GLUMLP, MLP
from jdistill.nn.norms import GatedRMSNorm, RMSNorm
from jdistill.nn.regla import ReGLA
from jdistill.nn.rope import apply_rope

__all__ = [
    "GLUMLP",
    "MLP",
    "ExitHeads",
    "ExpandedGatingActivation",
    "GatedRMSNorm",
    "GatedSelfAttention",
    "HeadGates",
    "KVCache",
    "RMSNorm",
    "ReGLA",
    "ResidualGate",
    "apply_rope",
    "classify_heads",
    "gate_sparsity_loss",
    "get_activation",
    "golu",
    "head_gating_objective",
    "skip_mask",
    "xatlu",
    "xgelu",
    "xsilu",
]

"""Flax NNX layers: gated attention, MLPs, norms, positional encodings."""

from jdistill.nn.attention import GatedSelfAttention
from jdistill.nn.activations import GLUMLP
from jdistill.nn.mlp import MLP
from jdistill.nn.norms import RMSNorm
from jdistill.nn.rope import apply_rope

__all__ = ["GLUMLP", "GatedSelfAttention", "MLP", "RMSNorm", "apply_rope"]

"""Pure-function distillation objectives (conventions.md, methods.md)."""

from jdistill.losses.logits import cross_entropy, forward_kl, generalized_jsd, kd, reverse_kl, tvd
from jdistill.losses.reduction import REDUCTIONS, reduce_tokens

__all__ = [
    "REDUCTIONS",
    "cross_entropy",
    "forward_kl",
    "generalized_jsd",
    "kd",
    "reduce_tokens",
    "reverse_kl",
    "tvd",
]

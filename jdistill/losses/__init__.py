"""Pure-function distillation objectives (conventions.md, methods.md)."""

from jdistill.losses.logits import cross_entropy, forward_kl, generalized_jsd, kd, reverse_kl, tvd
from jdistill.losses.reduction import REDUCTIONS, reduce_tokens
from jdistill.losses.selfdistill import (
    best_ground_truth_weight,
    ensemble_teacher_log_probs,
    krr_operator,
    pskd_alpha,
    pskd_initial_buffer,
    pskd_targets,
    self_distillation_iterates,
    self_distillation_limit,
    self_evolution_kd,
    token_difficulty,
    warn_if_unregularised,
    xi_self_distillation,
)
from jdistill.losses.sparse import TAIL_FLOOR, topk_kd, uld_loss

__all__ = [
    "REDUCTIONS",
    "TAIL_FLOOR",
    "best_ground_truth_weight",
    "cross_entropy",
    "ensemble_teacher_log_probs",
    "forward_kl",
    "generalized_jsd",
    "kd",
    "krr_operator",
    "pskd_alpha",
    "pskd_initial_buffer",
    "pskd_targets",
    "reduce_tokens",
    "reverse_kl",
    "self_distillation_iterates",
    "self_distillation_limit",
    "self_evolution_kd",
    "token_difficulty",
    "topk_kd",
    "tvd",
    "uld_loss",
    "warn_if_unregularised",
    "xi_self_distillation",
]

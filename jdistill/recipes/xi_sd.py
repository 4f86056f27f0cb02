"""Self-distillation with a mixing weight xi (Das & Sanghavi 2023, "Understanding Self-Distillation in the
Presence of Label Noise"; docs/methods.md#self-distillation-with-xi, docs/conventions.md#weights).

    loss = CE(tau, p_s) = xi * CE(p_t, p_s) + (1 - xi) * CE(onehot(y), p_s),   tau = xi * p_t + (1 - xi) * onehot(y)

with p = softmax(logits / T) on both sides (the paper: T = 1) and no T^2 factor (`losses.xi_self_distillation`).
The teacher is a frozen, trained model of the student's own architecture (`teacher.model` must equal
`student.model`). xi may exceed 1 (the paper's optima at 50% symmetric label noise: 1.5 to 3.5); then tau has a
negative entry and the loss is unbounded below unless the student is regularised, so the recipe warns once when
xi > 1 and the student's weight decay is 0 (`weight_decay` comes from `student.train.weight_decay` through
`bind`; the check runs in `init`, when the recipe knows it).
Token-level for LMs: (sum, count) over valid tokens.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdistill import losses
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase
from jdistill.recipes.born_again import require_same_architecture, require_same_architecture_config


@dataclasses.dataclass(frozen=True)
class XiSelfDistillation(RecipeBase):
    """Self-distillation with xi (Das & Sanghavi 2023): CE to xi*p_teacher + (1-xi)*onehot, same-size teacher."""

    xi: float = 1.5
    temperature: float = 1.0
    weight_decay: float | None = None
    name: str = "xi_sd"
    teacher_policy: str = "frozen"

    def check(self, config):
        require_same_architecture_config(self.name, config)

    def init(self, student_params, teacher_params, rng):
        losses.warn_if_unregularised(self.xi, self.weight_decay or 0.0)
        require_same_architecture(self.name, student_params, teacher_params)
        return super().init(student_params, teacher_params, rng)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_logits = teacher(batch["inputs"], **lm_kwargs(batch)).logits
        total, count = losses.xi_self_distillation(
            student_logits,
            teacher_logits,
            labels,
            xi=self.xi,
            temperature=self.temperature,
            mask=mask,
            reduction="sum_count",
        )
        metrics = {"xi_ce": total / jnp.maximum(count, 1.0), "accuracy": token_accuracy(student_logits, labels, mask)}
        return (total, count), metrics, ()

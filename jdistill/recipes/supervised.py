"""Supervised training on labels alone (the teacher itself, and the from-scratch student baseline)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.losses import cross_entropy
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class Supervised(RecipeBase):
    """`CE(y, s)` on labels alone, no teacher (the teacher's own training and the from-scratch baseline)."""

    label_smoothing: float = 0.0
    name: str = "supervised"
    teacher_policy: str = "none"

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        labels, mask = targets_and_mask(batch)
        logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        total, count = cross_entropy(
            logits, labels, mask=mask, label_smoothing=self.label_smoothing, reduction="sum_count"
        )
        ce = total / jnp.maximum(count, 1.0)
        return (total, count), {"ce": ce, "accuracy": token_accuracy(logits, labels, mask)}, ()

"""Self-Evolution KD: token-difficulty-aware distillation (paper-inspired; Song et al. 2024, "Self-Evolution
Knowledge Distillation for LLM-based Machine Translation"; docs/methods.md#self-evolution-kd).

    d_i     = KL(r_i || p_s,i),  r = 0.5 * (p_t + onehot(y))                    (token difficulty)
    hard i  (the ceil(hard_fraction * n) hardest valid tokens of the batch):  gamma_i = gamma_max * d_i / max d,
            D_i = KL(p_t || (1 - gamma_i) p_s + gamma_i r)
    easy i: D_i = KL(p_t || p_s)
    loss    = distill_weight * c * sum_i D_i / n + label_weight * CE(y, s)

with p at temperature T on both sides and c = T^2 when `scale_by_temperature_squared` (as in `kd`, so that
gamma_max = 0 is exactly token-level KD). The objective is `losses.self_evolution_kd`; the paper specifies the
mixing only in prose: the linear gamma schedule and the batch-level hard fraction are this library's choices.
Token-level for LMs ((sum, count) over valid tokens) and per example for classifiers. With gradient
accumulation the hard tokens are chosen per micro-batch.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdistill import losses
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class SelfEvolutionKD(RecipeBase):
    """Self-Evolution KD (Song et al. 2024, paper-inspired): hard tokens distil into p_s mixed with (p_t+onehot)/2."""

    hard_fraction: float = 0.5
    gamma_max: float = 0.5
    temperature: float = 1.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    scale_by_temperature_squared: bool = True
    name: str = "sekd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if not 0.0 <= self.gamma_max < 1.0:
            raise ValueError(f"gamma_max must be in [0, 1), got {self.gamma_max}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_logits = teacher(batch["inputs"], **lm_kwargs(batch)).logits
        reduce = dict(mask=mask, reduction="sum_count")
        distill, count = losses.self_evolution_kd(
            student_logits,
            teacher_logits,
            labels,
            hard_fraction=self.hard_fraction,
            gamma_max=self.gamma_max,
            temperature=self.temperature,
            **reduce,
        )
        if self.scale_by_temperature_squared:
            distill = distill * self.temperature**2
        ce, _ = losses.cross_entropy(student_logits, labels, **reduce)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {"distill": distill * per, "ce": ce * per, "accuracy": token_accuracy(student_logits, labels, mask)}
        return (self.distill_weight * distill + self.label_weight * ce, count), metrics, ()

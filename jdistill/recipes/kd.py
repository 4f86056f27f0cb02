"""Logit knowledge distillation from a frozen teacher (Hinton et al. 2015), any divergence of the catalogue.

    loss = distill_weight * c * D(p_t, p_s at temperature T) + label_weight * CE(y, s at T = 1)

with D the configured divergence (`forward_kl` is classic KD) and c = T^2 when `scale_by_temperature_squared`
(Hinton: keeps the gradient size independent of T), else 1. Token-level for LMs (masked mean over tokens).
"""

from __future__ import annotations

import dataclasses
import functools

from jdistill import losses
from jdistill.recipes.base import targets_and_mask
from jdistill.recipes.supervised import token_accuracy

DIVERGENCES = ("forward_kl", "reverse_kl", "generalized_jsd", "tvd")


@dataclasses.dataclass(frozen=True)
class KnowledgeDistillation:
    objective: str = "forward_kl"
    temperature: float = 2.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    beta: float = 0.5
    scale_by_temperature_squared: bool = True
    name: str = "kd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if self.objective not in DIVERGENCES:
            raise ValueError(f"objective must be one of {DIVERGENCES}, got {self.objective!r}")

    @classmethod
    def from_config(cls, distill_config) -> "KnowledgeDistillation":
        return cls(**{f.name: getattr(distill_config, f.name) for f in dataclasses.fields(distill_config)})

    def init_state(self):
        return ()

    def divergence(self):
        fn = getattr(losses, self.objective)
        return functools.partial(fn, beta=self.beta) if self.objective == "generalized_jsd" else fn

    def loss(self, student_output, teacher_output, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student, teacher = student_output.logits, teacher_output.logits
        distill = self.divergence()(student, teacher, temperature=self.temperature, mask=mask)
        if self.scale_by_temperature_squared:
            distill = distill * self.temperature**2
        ce = losses.cross_entropy(student, labels, mask=mask)
        total = self.distill_weight * distill + self.label_weight * ce
        metrics = {"loss": total, "distill": distill, "ce": ce, "accuracy": token_accuracy(student, labels, mask)}
        return total, metrics, recipe_state

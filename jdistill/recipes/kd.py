"""Logit knowledge distillation from a frozen teacher (Hinton et al. 2015), any divergence of the catalogue.

    loss = distill_weight * c * D(p_t, p_s at temperature T) + label_weight * CE(y, s at T = 1)

with D the configured divergence (`forward_kl` is classic KD) and c = T^2 when `scale_by_temperature_squared`
(Hinton: keeps the gradient size independent of T), else 1. Token-level for LMs: returned as (sum, count) over
valid tokens, so gradient accumulation and data parallelism normalise by the global token count. With
`vocab_chunk > 0` (LMs) the head is applied in chunks of that many tokens (`losses.chunked_distillation_loss`):
neither `[batch, seq, vocab]` logit tensor is ever materialised.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

from jdistill import losses
from jdistill.recipes.base import RecipeBase, targets_and_mask
from jdistill.recipes.supervised import token_accuracy

DIVERGENCES = ("forward_kl", "reverse_kl", "generalized_jsd", "tvd")


@dataclasses.dataclass(frozen=True)
class KnowledgeDistillation(RecipeBase):
    """Logit KD from a frozen trained teacher (Hinton et al. 2015), any divergence of the catalogue."""

    objective: str = "forward_kl"
    temperature: float = 2.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    beta: float = 0.5
    scale_by_temperature_squared: bool = True
    vocab_chunk: int = 0
    name: str = "kd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if self.objective not in DIVERGENCES:
            raise ValueError(f"objective must be one of {DIVERGENCES}, got {self.objective!r}")

    def divergence(self):
        fn = getattr(losses, self.objective)
        return functools.partial(fn, beta=self.beta) if self.objective == "generalized_jsd" else fn

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        if self.vocab_chunk and labels.ndim == 2:
            return self._chunked_loss(student, teacher, recipe_state, batch, labels, mask)
        student_logits = student(batch["inputs"]).logits
        teacher_logits = teacher(batch["inputs"]).logits
        (total, count), metrics = self.loss_from_logits(student_logits, teacher_logits, labels, mask)
        return (total, count), metrics, ()

    def loss_from_logits(self, student_logits, teacher_logits, labels, mask):
        """((sum, count) over valid positions, metrics): the divergence and CE are each computed once."""
        reduce = dict(mask=mask, reduction="sum_count")
        distill, count = self.divergence()(student_logits, teacher_logits, temperature=self.temperature, **reduce)
        if self.scale_by_temperature_squared:
            distill = distill * self.temperature**2
        ce, _ = losses.cross_entropy(student_logits, labels, **reduce)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {"distill": distill * per, "ce": ce * per, "accuracy": token_accuracy(student_logits, labels, mask)}
        total = self.distill_weight * distill
        if self.label_weight:  # at label_weight 0 the CE stays a metric: no backward pass through it
            total = total + self.label_weight * ce
        return (total, count), metrics

    def _chunked_loss(self, student, teacher, recipe_state, batch, labels, mask):
        s_out, t_out = student(batch["inputs"], logits=False), teacher(batch["inputs"], logits=False)
        s_head, s_bias = student.head_weights()
        t_head, t_bias = teacher.head_weights()
        total, count = losses.chunked_distillation_loss(
            s_out.features, s_head, t_out.features, t_head, labels, objective=self.objective,
            temperature=self.temperature, beta=self.beta, distill_weight=self.distill_weight,
            label_weight=self.label_weight, scale_by_temperature_squared=self.scale_by_temperature_squared,
            mask=mask, student_bias=s_bias, teacher_bias=t_bias, chunk_size=self.vocab_chunk,
            reduction="sum_count")
        return (total, count), {"distill_and_ce": total / jnp.maximum(count, 1.0)}, ()

"""Hierarchical multi-exit self-distillation (paper-inspired, after MoSE; docs/methods.md#multi-exit-self-distillation).

The student has early exits at `student.model.exit_layers` (a shared exit head over the RMS-normalised hidden
state with a small layer-index embedding, `jdistill.nn.exits`); its final head is the last exit. Teacher policy
`self`: deeper exits teach earlier ones, inside one forward pass (`losses.hierarchical_multi_exit_loss`):

    L = sum_k w_k [label_weight * CE(y, z_k) + distill_weight * T^2 KL(p_{teacher(k)} || p_k)],

exits z_1..z_n shallow to deep (z_n the final head), p = softmax(z / T), teacher(k) = k + 1 (`teacher: next`) or
the final head (`teacher: final`) under stop_gradient, no distillation term on the final head. Per-exit weights:
`exit_weights` (one per exit including the final head, renormalised to sum 1) or `weight_scheme` (`linear`:
w_k proportional to k; `uniform`). The labels are the only signal for the final head, so `label_weight` must be
> 0 (default 1.0).
Token-level for LMs: (sum, count) over valid tokens. `extra_metrics` adds each exit's accuracy on the evaluation
split (`exit<layer>_accuracy`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class MultiExitSelfDistillation(RecipeBase):
    """Hierarchical multi-exit self-distillation (after MoSE): deeper exits and the final head teach earlier exits."""

    temperature: float = 2.0
    distill_weight: float = 1.0
    label_weight: float = 1.0
    teacher: str = "next"
    weight_scheme: str = "linear"
    exit_weights: list | None = None
    name: str = "multi_exit"
    teacher_policy: str = "self"

    def __post_init__(self):
        if self.teacher not in ("next", "final"):
            raise ValueError(f"teacher must be 'next' or 'final', got {self.teacher!r}")
        if self.weight_scheme not in ("linear", "uniform"):
            raise ValueError(f"weight_scheme must be 'linear' or 'uniform', got {self.weight_scheme!r}")
        if self.label_weight <= 0:
            raise ValueError("label_weight must be > 0: the labels are the only signal for the final head")
        if self.exit_weights is not None and (
            not self.exit_weights or min(self.exit_weights) < 0 or sum(self.exit_weights) <= 0
        ):
            raise ValueError(f"exit_weights must be non-negative numbers with a positive sum, got {self.exit_weights}")

    def check(self, config):
        exit_layers = config.student.model.exit_layers
        if not exit_layers:
            raise ConfigError("recipe multi_exit: the student has no exits; set student.model.exit_layers")
        if self.exit_weights is not None and len(self.exit_weights) != len(exit_layers) + 1:
            raise ConfigError(
                f"distill.options.exit_weights: {len(self.exit_weights)} weights for "
                f"{len(exit_layers) + 1} exits (one per exit layer plus the final head)"
            )

    def weights(self, num_exits: int):
        """Per-exit weights (shallow to deep, the final head last), summing to 1."""
        if self.exit_weights is None:
            return losses.multi_exit_weights(num_exits, scheme=self.weight_scheme)
        weights = jnp.asarray(self.exit_weights, jnp.float32)
        return weights / weights.sum()

    def exit_logits(self, output) -> tuple:
        return tuple(output.exits) + (output.logits,)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        labels, mask = targets_and_mask(batch)
        logits = self.exit_logits(student(batch["inputs"], **lm_kwargs(batch)))
        common = dict(
            temperature=self.temperature,
            weights=self.weights(len(logits)),
            teacher=self.teacher,
            mask=mask,
            reduction="sum_count",
        )
        total, count = losses.hierarchical_multi_exit_loss(
            logits, labels, distill_weight=self.distill_weight, label_weight=self.label_weight, **common
        )
        distill, _ = losses.hierarchical_multi_exit_loss(logits, None, distill_weight=1.0, label_weight=0, **common)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {
            "distill": distill * per,
            "accuracy": token_accuracy(logits[-1], labels, mask),
            "first_exit_accuracy": token_accuracy(logits[0], labels, mask),
        }
        return (total, count), metrics, ()

    def extra_metrics(self, model, eval_batches, rng) -> dict:
        """Top-1 accuracy of every early exit on the evaluation batches."""
        del rng
        layers = model.config.exit_layers
        if not layers:
            return {}
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda params, inputs: nnx.merge(graphdef, params)(inputs).exits)
        correct, count = np.zeros(len(layers)), 0.0
        for batch in eval_batches:
            labels, mask = targets_and_mask(batch)
            weight = np.ones(np.shape(labels)) if mask is None else np.asarray(mask, np.float64)
            for index, logits in enumerate(jax.device_get(forward(params, batch["inputs"]))):
                correct[index] += float(((np.argmax(logits, -1) == np.asarray(labels)) * weight).sum())
            count += float(weight.sum())
        return {f"exit{layer}_accuracy": correct[i] / max(count, 1.0) for i, layer in enumerate(layers)}

"""Ground-truth-guided self-distillation, deep form (paper-inspired; Borup & Andersen 2023, "Even your Teacher
Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation";
docs/methods.md#ground-truth-guided-self-distillation).

    target = alpha * onehot(y) + (1 - alpha) * p_t,    loss = CE(target, softmax(s / T))   (no T^2)

i.e. `losses.xi_self_distillation` with xi = 1 - alpha. The teacher is the trained teacher (generation 1, trained
on labels; it must have the student's architecture) and with `generations > 1` each student generation teaches the
next (the job's born-again mechanism). The kernel form and its closed-form alpha are in `losses.kernel_ridge`.

alpha: a fixed `alpha`, or (alpha = None) chosen per generation by the kernel form's linearity, which the paper
states for kernel ridge regression only; its deep transfer here is this library's choice ("open"). Each training
batch is split in halves; two ridge probes (`probe_ridge`, with intercept) on the teacher's features of the first
half are fitted, one to the one-hot labels (alpha = 1) and one to the teacher's probabilities (alpha = 0); any
alpha's probe is their affine combination, so the alpha in [0, 1] whose probe best predicts the second half's
one-hot labels is closed-form (`losses.probe_alpha`). That is, the next generation is modelled as
kernel regression with the teacher's feature kernel. The estimates of the first `probe_batches` steps (each from
its whole batch, once per optimizer step) are averaged in the recipe state; a step's loss uses the average of the
steps before it, fixed once probing ends. The first step, before any estimate, trains on the labels alone
(alpha = 1): a step's alpha never depends on its own batch, so under gradient accumulation every micro-batch
uses the same alpha as the full batch. Classifiers only
when alpha is chosen (a fixed alpha works for LMs too, token-level).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase
from jdistill.recipes.born_again import require_same_architecture, require_same_architecture_config


@dataclasses.dataclass(frozen=True)
class TeacherGuidance(RecipeBase):
    """Guided self-distillation (Borup & Andersen 2023): CE to alpha*onehot + (1-alpha)*p_teacher, alpha from probes."""

    alpha: float | None = None
    generations: int = 2
    temperature: float = 1.0
    probe_ridge: float = 1.0
    probe_batches: int = 50
    name: str = "teacher_guidance"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or null (chosen by probes), got {self.alpha}")
        if self.generations < 1 or self.probe_batches < 1 or self.probe_ridge <= 0:
            raise ValueError("generations and probe_batches must be >= 1 and probe_ridge > 0")

    def check(self, config):
        require_same_architecture_config(self.name, config)
        if self.alpha is None and config.student.model.kind != "classifier":
            raise ConfigError(
                "recipe 'teacher_guidance' chooses alpha for classifiers only; set distill.options.alpha "
                "for language models"
            )

    def init(self, student_params, teacher_params, rng):
        require_same_architecture(self.name, student_params, teacher_params)
        return student_params, {"alpha_sum": jnp.zeros((), jnp.float32), "estimates": jnp.zeros((), jnp.int32)}

    def batch_alpha(self, teacher_features, teacher_logits, labels):
        """This batch's probe estimate of alpha (first half fits, second half validates)."""
        half = labels.shape[0] // 2
        onehot = jax.nn.one_hot(labels, teacher_logits.shape[-1], dtype=jnp.float32)
        teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32) / self.temperature, axis=-1)
        features = teacher_features.astype(jnp.float32)
        return losses.probe_alpha(
            features[:half], onehot[:half], teacher_probs[:half], features[half:], onehot[half:], self.probe_ridge
        )

    def current_alpha(self, recipe_state):
        """alpha for this step's loss: the fixed `alpha`, else the mean of the earlier steps' estimates (at the
        first step, before any, 1: the labels alone). Read from the state only, never from this step's batch."""
        if self.alpha is not None:
            return jnp.asarray(self.alpha, jnp.float32)
        estimates = recipe_state["estimates"]
        mean = recipe_state["alpha_sum"] / jnp.maximum(estimates, 1)
        return jnp.where(estimates > 0, mean, 1.0)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_output = teacher(batch["inputs"], **lm_kwargs(batch))
        alpha = self.current_alpha(recipe_state)
        total, count = losses.xi_self_distillation(
            student_logits,
            teacher_output.logits,
            labels,
            xi=1.0 - alpha,
            temperature=self.temperature,
            mask=mask,
            reduction="sum_count",
        )
        metrics = {
            "guided_ce": total / jnp.maximum(count, 1.0),
            "alpha": alpha,
            "accuracy": token_accuracy(student_logits, labels, mask),
        }
        statistics = (
            ()
            if self.alpha is not None
            else {"features": teacher_output.features, "logits": teacher_output.logits, "labels": labels}
        )
        return (total, count), metrics, statistics

    def update_state(self, recipe_state, statistics):
        """While probing (the first `probe_batches` steps), add the whole batch's probe estimate of alpha."""
        if self.alpha is not None:
            return recipe_state
        probing = recipe_state["estimates"] < self.probe_batches
        estimate = self.batch_alpha(statistics["features"], statistics["logits"], statistics["labels"])
        return {
            "alpha_sum": recipe_state["alpha_sum"] + jnp.where(probing, estimate, 0.0),
            "estimates": recipe_state["estimates"] + probing.astype(jnp.int32),
        }

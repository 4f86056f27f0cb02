"""Defensive distillation (Papernot et al. 2016, "Distillation as a Defense to Adversarial Perturbations against
Deep Neural Networks"; docs/methods.md#defensive-distillation), with an FGSM / PGD evaluation of the deployed student.

    p_t = softmax(z_T / T),  z_T = t * T / teacher_trained_temperature   (the teacher's logits as if trained at T)
    loss = CE(tau, softmax(s / T)),  tau = (1 - label_weight) * p_t + label_weight * onehot(y)
    deployed (evaluated) at T = 1: softmax(s)

(`losses.xi_self_distillation` with xi = 1 - label_weight on the rescaled teacher logits; no T^2.) Papernot trains
the teacher at temperature T too. The job trains the teacher on labels at T = 1; a network trained at temperature
T is the same function class as one trained at T = 1 with its logits multiplied by T (the loss values agree; only
the optimisation path differs), so the recipe multiplies the teacher's logits by T / teacher_trained_temperature
(set it to T for a teacher loaded with `teacher.init_from` that was trained at T). Student logits end up ~T times
larger at T = 1, which saturates the softmax: gradient attacks then see vanishing gradients (gradient masking;
Carlini & Wagner 2016 break the defense with logit-space attacks), which is what the FGSM / PGD numbers measure.

`extra_metrics` reports, on the evaluation split at T = 1: `clean_accuracy`, `fgsm_accuracy` (one signed step of
size epsilon) and `pgd_accuracy` (`pgd_steps` steps of `pgd_step_size`, random start), inputs clipped to
[clip_min, clip_max] (`jdistill.eval.attacks`). Classifiers only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill import losses
from jdistill.eval import attacks
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase, require_images


@dataclasses.dataclass(frozen=True)
class DefensiveDistillation(RecipeBase):
    """Defensive distillation (Papernot et al. 2016): soft labels at high T, deployed at T=1; FGSM/PGD accuracy."""

    temperature: float = 20.0
    teacher_trained_temperature: float = 1.0
    label_weight: float = 0.0
    epsilon: float = 0.1
    pgd_steps: int = 10
    pgd_step_size: float = 0.025
    clip_min: float = 0.0
    clip_max: float = 1.0
    name: str = "defensive"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if self.temperature <= 0 or self.teacher_trained_temperature <= 0:
            raise ValueError("temperature and teacher_trained_temperature must be positive")

    def check(self, config):
        require_images(self.name, config)  # FGSM / PGD in pixel space

    def objective(self, student_logits, teacher_logits, labels, mask=None):
        """(sum, count) of CE(tau, softmax(s / T)) with the teacher's logits rescaled as if trained at T."""
        teacher_at_T = teacher_logits * (self.temperature / self.teacher_trained_temperature)
        return losses.xi_self_distillation(
            student_logits,
            teacher_at_T,
            labels,
            xi=1.0 - self.label_weight,
            temperature=self.temperature,
            mask=mask,
            reduction="sum_count",
        )

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        total, count = self.objective(student_logits, teacher(batch["inputs"], **lm_kwargs(batch)).logits, labels, mask)
        metrics = {"soft_ce": total / jnp.maximum(count, 1.0), "accuracy": token_accuracy(student_logits, labels, mask)}
        return (total, count), metrics, ()

    def extra_metrics(self, model, eval_batches, rng):
        graphdef, params = nnx.split(model)

        def model_fn(inputs):
            return nnx.merge(graphdef, params)(inputs).logits

        predict = jax.jit(lambda x: jnp.argmax(model_fn(x), -1))
        correct = total = 0.0
        for batch in eval_batches:
            valid = batch.get("mask", jnp.ones(batch["labels"].shape, bool))
            correct += float(((predict(batch["inputs"]) == batch["labels"]) * valid).sum())
            total += float(valid.sum())
        fgsm = attacks.robust_accuracy(
            model_fn,
            eval_batches,
            rng,
            epsilon=self.epsilon,
            step_size=self.epsilon,
            steps=1,
            random_start=False,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
        )
        pgd = attacks.robust_accuracy(
            model_fn,
            eval_batches,
            jax.random.fold_in(rng, 1),
            epsilon=self.epsilon,
            step_size=self.pgd_step_size,
            steps=self.pgd_steps,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
        )
        return {"clean_accuracy": correct / max(total, 1.0), "fgsm_accuracy": fgsm, "pgd_accuracy": pgd}

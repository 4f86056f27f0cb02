"""ADR: annealing self-distillation rectification for adversarial training (Wu et al. 2024, "Annealing
Self-Distillation Rectification Improves Adversarial Training"; docs/methods.md#adr).

Per step, with an EMA of the student as teacher (policy `ema`, decay 0.995, kept in the recipe state):

    P_t     = softmax(f_ema(x_clean) / tau)
    lam_i   = clip(lam - (max_k P_t[i, k] - P_t[i, y_i]), 0, 1)
    q_i     = lam_i P_t[i] + (1 - lam_i) onehot(y_i)                         (`losses.adr_labels`)
    x_adv   = PGD(x, targets q, eps, step size, steps)   in the L-inf ball, [0, 1]   (`eval.attacks.pgd_attack`)
    L       = mean_i CE(q_i, f(x_adv)_i)                                      (`losses.soft_cross_entropy`)
    theta_ema <- 0.995 theta_ema + 0.005 theta                               (after the update)

tau and lam follow cosine schedules over training, tau 2.5 -> 2.0 and lam 0.7 -> 0.95 (`losses.cosine_schedule`,
the paper's CIFAR-10 values), indexed by the number of completed updates (kept in the recipe state) over
`total_steps` (the stage's train.steps, filled in by `bind`; 0 holds the start values). The PGD defaults are CIFAR-10's
(eps 8/255, step 2/255, 10 steps); the digits preset uses a larger ball for its 8x8 images. `extra_metrics`
adds the robust accuracy under the same PGD attack (`robust_accuracy`) on the evaluation split.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdistill.eval.attacks import pgd_attack, robust_accuracy
from jdistill.eval.metrics import token_accuracy
from jdistill.losses import ADR_EMA_DECAY, ADR_LAM, ADR_TEMPERATURE, adr_labels, cosine_schedule, soft_cross_entropy
from jdistill.losses.ssl import ema_update
from jdistill.recipes.base import RecipeBase, require_images
from jdistill.recipes.dino import copy_params


@dataclasses.dataclass(frozen=True)
class AnnealingSelfDistillationRectification(RecipeBase):
    """ADR (Wu et al. 2024): PGD adversarial training on labels rectified by an EMA teacher, annealed."""

    ema_decay: float = ADR_EMA_DECAY
    tau_start: float = ADR_TEMPERATURE[0]
    tau_end: float = ADR_TEMPERATURE[1]
    lam_start: float = ADR_LAM[0]
    lam_end: float = ADR_LAM[1]
    total_steps: int | None = None
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    attack_steps: int = 10
    clip_min: float = 0.0
    clip_max: float = 1.0
    name: str = "adr"
    teacher_policy: str = "ema"

    def __post_init__(self):
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.epsilon < 0 or self.step_size < 0 or self.attack_steps < 0:
            raise ValueError("epsilon, step_size and attack_steps must be >= 0")

    def check(self, config):
        require_images(self.name, config)  # PGD in pixel space

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        return student_params, {"teacher": copy_params(student_params), "step": jnp.zeros((), jnp.int32)}

    def teacher_params(self, recipe_state, teacher_params):
        del teacher_params
        return recipe_state["teacher"]

    def schedules(self, step):
        """(tau, lam) after `step` completed updates."""
        if not self.total_steps or self.total_steps <= 0:
            return jnp.asarray(self.tau_start, jnp.float32), jnp.asarray(self.lam_start, jnp.float32)
        return (
            cosine_schedule(step, self.total_steps, self.tau_start, self.tau_end),
            cosine_schedule(step, self.total_steps, self.lam_start, self.lam_end),
        )

    def attack(self, model, inputs, targets, rng):
        return pgd_attack(
            lambda x: model(x).logits,
            inputs,
            targets,
            rng,
            epsilon=self.epsilon,
            step_size=self.step_size,
            steps=self.attack_steps,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
        )

    def loss(self, student, teacher, recipe_state, batch, rng):
        inputs, labels = batch["inputs"], batch["labels"]
        tau, lam = self.schedules(recipe_state["step"])
        targets = adr_labels(teacher(inputs).logits, labels, temperature=tau, lam=lam)
        adversarial = self.attack(student, inputs, targets, rng)
        logits = student(adversarial).logits
        loss = soft_cross_entropy(logits, targets)
        metrics = {
            "adr_ce": loss,
            "tau": tau,
            "lam": lam,
            "adversarial_accuracy": token_accuracy(logits, labels),
            "target_true_prob": jnp.take_along_axis(targets, labels[:, None], axis=-1).mean(),
        }
        return loss, metrics, ()

    def after_update(self, recipe_state, params, step):
        teacher = ema_update(recipe_state["teacher"], params, self.ema_decay)
        return dict(recipe_state, teacher=teacher, step=jnp.asarray(step, jnp.int32))

    def extra_metrics(self, model, eval_batches, rng):
        accuracy = robust_accuracy(
            lambda x: model(x).logits,
            eval_batches,
            rng,
            epsilon=self.epsilon,
            step_size=self.step_size,
            steps=self.attack_steps,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
        )
        return {"robust_accuracy": accuracy}

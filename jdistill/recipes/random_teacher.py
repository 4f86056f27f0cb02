"""Random teachers (Sarnthein et al. 2023, "Random Teachers are Good Teachers"; docs/methods.md#random-teachers).

The teacher is frozen at its random initialisation (policy `random_init`: the job builds it from
`config.teacher.model` and never trains it); the student distils it with DINO's objective stripped down:

    L = mean_b KL(softmax(g_t / tau) || softmax(g_s / tau)),   tau_t = tau_s = tau = 1, no centring, one view

(`jdistill.losses.random_teacher_loss`: the paper's cross-entropy minus the frozen teacher's entropy, so the
gradient is the same and the loss is 0 when student and teacher agree). No labels are used.

Initialisation (`init` hook): theta_s = ((1 - a) theta_t + a theta_rand) / sqrt(2a^2 - 2a + 1), theta_rand the
student's own random initialisation (`losses.random_teacher_interpolation`). a = 0 starts the student as an exact
copy of the teacher: that is a fixed point of the objective (loss and gradient 0; only weight decay moves it), so
the default is a = 0.1, close to the teacher, where the paper finds feature learning strongly amplified (its
"locality" result); a = 1 is an independent initialisation (the official code's default `s_init=random`). Any
a < 1 requires the student to have the teacher's architecture. The projection head is the classifier head (its
width `num_classes` plays DINO's `out_dim`).

Evaluation: `extra_metrics` adds linear-probe and k-NN (k = 20) accuracy of the encoder features
(`jdistill.eval.probes`); the paper's claim is that the student's probe accuracy exceeds the teacher's.
"""

from __future__ import annotations

import dataclasses

from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs
from jdistill.eval.probes import KNN_K, probe_metrics
from jdistill.losses import random_teacher_interpolation, random_teacher_loss
from jdistill.recipes.base import RecipeBase, require_kind
from jdistill.recipes.born_again import abstract_params, same_shapes

SAME_ARCHITECTURE = (
    "random_teacher: distill.options.init_alpha < 1 starts the student from the teacher, so "
    "student.model must equal teacher.model (or set init_alpha: 1)"
)


@dataclasses.dataclass(frozen=True)
class RandomTeacher(RecipeBase):
    """Random teachers (Sarnthein et al. 2023): distil a frozen randomly initialised teacher, no labels."""

    init_alpha: float = 0.1
    tau: float = 1.0
    probe_k: int = KNN_K
    name: str = "random_teacher"
    teacher_policy: str = "random_init"

    def __post_init__(self):
        if not 0.0 <= self.init_alpha <= 1.0:
            raise ValueError(f"init_alpha must be in [0, 1], got {self.init_alpha}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")

    def check(self, config):
        require_kind(self.name, config, "classifier")  # the probes of `extra_metrics` read labels
        if self.init_alpha < 1.0 and not same_shapes(
            abstract_params(config.student.model), abstract_params(config.teacher.model)
        ):
            raise ConfigError(SAME_ARCHITECTURE)

    def init(self, student_params, teacher_params, rng):
        del rng
        if self.init_alpha == 1.0:
            return student_params, ()
        if teacher_params is None or not same_shapes(student_params, teacher_params):
            raise ConfigError(SAME_ARCHITECTURE)
        return random_teacher_interpolation(teacher_params, student_params, self.init_alpha), ()

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_logits = teacher(batch["inputs"], **lm_kwargs(batch)).logits
        loss = random_teacher_loss(student_logits, teacher_logits, temperature=self.tau)
        agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).mean()
        return loss, {"random_teacher_kl": loss, "teacher_agreement": agreement}, ()

    def extra_metrics(self, model, eval_batches, rng):
        return probe_metrics(model, eval_batches, rng, k=self.probe_k)

"""Voting / snapshot teachers (SD-DARTS: Zhu, Li, Liu & Wang 2023, "Improving Differentiable Architecture Search
via Self-Distillation"; docs/methods.md#snapshot-and-voting-teachers).

    teacher = ensemble of the last K snapshots of the student, taken every `snapshot_every` steps:
      "mean":  p_t = (1/K) sum_k softmax(s_k / T)
      "vote":  p_t = (1 - vote_smoothing) * onehot(majority argmax) + vote_smoothing / V
    loss = active * distill_weight * c * KL(p_t || softmax(s / T)) + label_weight * CE(y, s)

with c = T^2 when `scale_by_temperature_squared` and active = 1 once K snapshots have been taken (before that the
student trains on labels alone, so the teacher is always an ensemble of exactly K snapshots). The snapshots are a
ring buffer in the recipe state (each parameter stacked `[K, ...]`, sharded like the parameter), written in
`after_update` under `lax.cond`; the step passes them, stop-gradient, as the teacher's parameters and the loss
runs the K snapshots with `vmap` (`losses.ensemble_teacher_log_probs`). Token-level for LMs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill import losses
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class SnapshotKD(RecipeBase):
    """Snapshot / voting teachers (SD-DARTS): distil from the mean or majority vote of the last K student snapshots."""

    num_snapshots: int = 3
    snapshot_every: int = 100
    method: str = "mean"
    vote_smoothing: float = 0.0
    temperature: float = 2.0
    distill_weight: float = 0.5
    label_weight: float = 1.0
    scale_by_temperature_squared: bool = True
    name: str = "snapshot_kd"
    teacher_policy: str = "snapshots"

    def __post_init__(self):
        if self.num_snapshots < 1 or self.snapshot_every < 1:
            raise ValueError("num_snapshots and snapshot_every must be positive")
        if self.method not in losses.selfdistill.ENSEMBLE_METHODS:
            raise ValueError(f"method must be 'mean' or 'vote', got {self.method!r}")

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        stack = jax.tree.map(lambda p: jnp.stack([p] * self.num_snapshots), student_params)
        return student_params, {"snapshots": stack, "taken": jnp.zeros((), jnp.int32)}

    def teacher_params(self, recipe_state, teacher_params):
        del teacher_params
        return recipe_state["snapshots"]

    def after_update(self, recipe_state, params, step):
        take = step % self.snapshot_every == 0
        slot = recipe_state["taken"] % self.num_snapshots

        def write(stack):
            return jax.tree.map(lambda s, p: s.at[slot].set(p.astype(s.dtype)), stack, params)

        snapshots = jax.lax.cond(take, write, lambda stack: stack, recipe_state["snapshots"])
        return {"snapshots": snapshots, "taken": recipe_state["taken"] + take.astype(jnp.int32)}

    def teacher_log_probs(self, teacher, inputs, **model_kwargs):
        """Log-probabilities at temperature T of the snapshot ensemble (`teacher` holds stacked parameters)."""
        graphdef, stacked = nnx.split(teacher)
        logits = jax.vmap(lambda params: nnx.merge(graphdef, params)(inputs, **model_kwargs).logits)(stacked)
        return losses.ensemble_teacher_log_probs(
            logits, temperature=self.temperature, method=self.method, vote_smoothing=self.vote_smoothing
        )

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_log_probs = self.teacher_log_probs(teacher, batch["inputs"], **lm_kwargs(batch))
        reduce = dict(mask=mask, reduction="sum_count")
        # The ensemble is already at temperature T (normalised log-probs); only the student is divided here.
        distill, count = losses.forward_kl(
            student_logits / self.temperature, teacher_log_probs, temperature=1.0, **reduce
        )
        if self.scale_by_temperature_squared:
            distill = distill * self.temperature**2
        active = (recipe_state["taken"] >= self.num_snapshots).astype(jnp.float32)
        ce, _ = losses.cross_entropy(student_logits, labels, **reduce)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {
            "distill": distill * per,
            "ce": ce * per,
            "teacher_active": active,
            "accuracy": token_accuracy(student_logits, labels, mask),
        }
        return (active * self.distill_weight * distill + self.label_weight * ce, count), metrics, ()

"""LayerSkip training (Elhoushi et al. 2024; docs/early_exit.md#layerskip-training): layer dropout rising with
depth and an early-exit loss on every layer through the model's shared final norm and head, so that early layers'
outputs become usable predictions (for early exit and self-speculative decoding, `jdistill.models.speculative`).

    L = sum_l w(t, l) CE(y, head(norm(h_l)))          (`losses.early_exit_loss`, weights `losses.exit_weights`)

with block l of every row skipped with probability p(l, t) (`losses.layer_dropout_rates`: p_max times a depth
factor rising from 0 at the first block to 1 at the last, times a time factor: 1, or rising from 0 to 1 over the
stage with `dropout_schedule: exponential`). The curriculum (`none`, `rotational` with period `rotation`,
`gradual` over `gradual_steps`, default the stage's steps) decides which layers' losses count at step t; the last
layer always counts. e_scale = 0 and p_max = 0 give plain supervised training. Language models (per token) and
classifiers (per example, each layer's output mean-pooled). No teacher; no temperature.
Metrics: `ce` (the last layer's), `early_exit_ce` (the weighted objective), `layers_kept` (mean fraction of blocks
run per row).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill import losses
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class LayerSkip(RecipeBase):
    """LayerSkip (Elhoushi et al. 2024): layer dropout rising with depth + early-exit loss through the shared head."""

    p_max: float = 0.1
    dropout_schedule: str = "constant"
    e_scale: float = 1.0
    curriculum: str = "rotational"
    rotation: int = 2
    gradual_steps: int | None = None
    chunk_size: int = 1024
    total_steps: int | None = None
    steps_per_epoch: float | None = None
    name: str = "layerskip"
    teacher_policy: str = "none"

    def __post_init__(self):
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"p_max must be in [0, 1], got {self.p_max!r}")
        if self.dropout_schedule not in losses.early_exit.DROPOUT_SCHEDULES:
            raise ValueError(
                f"dropout_schedule must be one of {losses.early_exit.DROPOUT_SCHEDULES}, got {self.dropout_schedule!r}"
            )
        if self.e_scale < 0:
            raise ValueError(f"e_scale must be >= 0, got {self.e_scale!r}")
        if self.curriculum not in losses.early_exit.CURRICULA:
            raise ValueError(f"curriculum must be one of {losses.early_exit.CURRICULA}, got {self.curriculum!r}")
        if not isinstance(self.rotation, int) or self.rotation < 1:
            raise ValueError(f"rotation must be a positive integer, got {self.rotation!r}")
        if self.gradual_steps is not None and (not isinstance(self.gradual_steps, int) or self.gradual_steps < 1):
            raise ValueError(f"gradual_steps must be a positive integer or null, got {self.gradual_steps!r}")

    def step_of(self, batch):
        """The optimizer step of this batch (from its `epoch` position), as a traced int."""
        per_epoch = self.steps_per_epoch or 1.0
        return jnp.round(jnp.asarray(batch["epoch"], jnp.float32) * per_epoch).astype(jnp.int32)

    def weights(self, num_layers: int, step):
        return losses.exit_weights(
            num_layers,
            step,
            e_scale=self.e_scale,
            curriculum=self.curriculum,
            rotation=self.rotation,
            gradual_steps=self.gradual_steps or self.total_steps or 1,
        )

    def exits_computed(self, num_layers: int) -> int:
        """How many layers' cross-entropies each step computes (static): the most that have w(t, l) > 0."""
        return losses.early_exit.max_active_exits(
            num_layers, e_scale=self.e_scale, curriculum=self.curriculum, rotation=self.rotation
        )

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, recipe_state
        config = student.config
        num_layers = config.num_layers
        labels, mask = targets_and_mask(batch)
        step = self.step_of(batch)
        rates = losses.layer_dropout_rates(
            num_layers, step, self.total_steps or 1, p_max=self.p_max, schedule=self.dropout_schedule
        )
        keep = losses.layer_keep_mask(rng, batch["inputs"].shape[0], rates)
        out = student(batch["inputs"], **lm_kwargs(batch), return_hidden_states=True, layer_keep=keep, logits=False)
        weights = self.weights(num_layers, step)
        # Only the layers with w(t, l) > 0 go through the head (the last one first): e(0) = 0, and the rotational
        # curriculum turns on about L / R of them per step.
        active = losses.early_exit.active_exits(weights, self.exits_computed(num_layers))
        normed = jax.vmap(student.final_norm)(jnp.stack(out.hidden_states[1:])[active])  # [K, batch, seq, d]
        if config.kind == "classifier":
            normed = normed.mean(axis=2, keepdims=True)  # the classifier's head reads mean(norm(h))
            labels, mask = labels[:, None], None
        head, bias = student.head_weights()
        sums, count = losses.early_exit.exit_cross_entropies(
            normed, head, labels, mask=mask, bias=bias, chunk_size=self.chunk_size
        )
        total = jnp.dot(weights[active], sums)
        metrics = {
            "ce": jax.lax.stop_gradient(sums[0]) / jnp.maximum(count, 1.0),
            "early_exit_ce": total / jnp.maximum(count, 1.0),
            "layers_kept": jnp.mean(keep.astype(jnp.float32)),
        }
        return (total, count), metrics, ()

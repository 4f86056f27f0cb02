"""Progressive self-knowledge distillation, PS-KD (Kim et al. 2021, "Self-Knowledge Distillation with Progressive
Refinement of Targets"; docs/methods.md#ps-kd; checked against the official code).

    alpha_t = alpha_T * (epoch + 1) / E                 (epoch = floor(batch["epoch"]), counted from 0)
    target  = (1 - alpha_t) * onehot(y) + alpha_t * P[index]
    loss    = CE(target, softmax(s))                    (batch mean; T = 1, no T^2)

P is the network's own softmax from the previous epoch: a per-example buffer `[num_examples, classes]` in the
recipe state, read at the batch's `index` (the example's position in the training split) and overwritten with
the current softmax after use, so each read returns what the network predicted for that example one epoch ago.
The buffer starts as one-hot labels (the labels are not known at init, so an all-zero row stands for its
example's one-hot label): the first epoch's targets are the labels. Classifiers only.

`num_examples` (the training split's size) and `num_epochs` (E, the stage's step budget in epochs) come from the
stage through `bind` unless set as options; an `index` beyond `num_examples` is clamped on read and dropped on
write. alpha_t is capped at alpha_T when training runs longer than E epochs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill import losses
from jdistill.eval.batch import lm_kwargs
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase, require_kind


@dataclasses.dataclass(frozen=True)
class ProgressiveSelfKD(RecipeBase):
    """PS-KD (Kim et al. 2021): CE to (1-alpha_t)*onehot + alpha_t*(the network's own softmax from the last epoch)."""

    alpha_T: float = 0.8
    num_epochs: float | None = None
    num_examples: int | None = None
    name: str = "pskd"
    teacher_policy: str = "previous_epoch"

    def __post_init__(self):
        if not 0.0 <= self.alpha_T <= 1.0:
            raise ValueError(f"alpha_T must be in [0, 1], got {self.alpha_T}")
        if (self.num_epochs is not None and self.num_epochs <= 0) or (
            self.num_examples is not None and self.num_examples < 1
        ):
            raise ValueError("num_epochs and num_examples must be positive (the training split's epochs and size)")

    def teacher_params(self, recipe_state, teacher_params):
        del recipe_state, teacher_params
        return None  # the teacher is the buffer in the recipe state, not a module

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        if self.num_epochs is None or self.num_examples is None:
            raise ValueError("pskd needs num_epochs and num_examples (the job sets them through bind)")
        num_classes = student_params["head"]["kernel"].shape[-1]
        return student_params, jnp.zeros((self.num_examples, num_classes), jnp.float32)

    def alpha(self, epoch):
        """alpha_t for the (float) epoch of the step, capped at alpha_T."""
        assert self.num_epochs is not None, "init checked that bind set num_epochs"
        return jnp.minimum(losses.pskd_alpha(jnp.floor(epoch), self.num_epochs, self.alpha_T), self.alpha_T)

    def targets(self, buffer, batch):
        """(targets `[batch, classes]`, alpha_t): P[index] mixed with the labels; unwritten rows read as one-hot."""
        past = buffer[batch["index"]]
        onehot = losses.pskd_initial_buffer(batch["labels"], buffer.shape[-1])
        past = jnp.where(past.sum(-1, keepdims=True) > 0, past, onehot)
        alpha = self.alpha(batch["epoch"])
        return losses.pskd_targets(batch["labels"], past, alpha), alpha

    def check(self, config):
        require_kind(self.name, config, "classifier")  # a per-example buffer: batches carry `index`

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        targets, alpha = self.targets(recipe_state, batch)
        ce = losses.soft_cross_entropy(logits, targets)
        probs = jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
        metrics = {"pskd_ce": ce, "alpha": alpha, "accuracy": token_accuracy(logits, batch["labels"])}
        return ce, metrics, {"index": batch["index"], "probs": probs}

    def update_state(self, recipe_state, statistics):
        """P[index] <- this step's softmax, for the whole batch (once per optimizer step)."""
        return recipe_state.at[statistics["index"]].set(statistics["probs"], mode="drop")

"""DCS: dynamic corrective self-distillation with per-example weights (docs/methods.md#dcs; paper-inspired, the
update rule is open: the choices below are this library's).

A frozen teacher (policy `frozen`; the preset gives it the student's architecture, i.e. self-distillation from a
trained copy) teaches the student; every training example i carries a weight w_i (recipe state, `[num_examples]`,
initialised to 1) read at the batch's `index`:

    L   = sum_b w_b [(1 - a) CE(y_b, s_b) + a T^2 KL(p_t,b || p_s,b)] / sum_b w_b          (`losses.dcs_loss`)
    d_i = [argmax s_i != argmax t_i]   (kind "indicator")   or KL(p_t,i || p_s,i)   (kind "kl")
    w  <- w * exp(eta * d)   on the batch's examples, then the whole table renormalised to mean 1
                                                                                      (`losses.dcs_update_weights`)

with a = `distill_weight`, T = `temperature`. Examples on which the student keeps disagreeing with its teacher
gain weight multiplicatively, as in boosting; uniform agreement leaves the weights unchanged. The loss uses the
weights from before this step's update, which happens once per optimizer step from the whole batch (also under
gradient accumulation). `num_examples` (the training split's size) comes from the stage through
`bind` unless set; an `index` beyond it is clamped on read and dropped on write. Classifiers only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill.eval.batch import lm_kwargs
from jdistill.eval.metrics import token_accuracy
from jdistill.losses import dcs_disagreement, dcs_loss, dcs_update_weights
from jdistill.recipes.base import RecipeBase, require_kind

KINDS = ("indicator", "kl")


@dataclasses.dataclass(frozen=True)
class DynamicCorrectiveSelfDistillation(RecipeBase):
    """Dynamic corrective self-distillation (paper-inspired): KD with boosting-style per-example weights."""

    eta: float = 0.5
    kind: str = "indicator"
    num_examples: int | None = None
    distill_weight: float = 0.5
    temperature: float = 2.0
    scale_by_temperature_squared: bool = True
    name: str = "dcs"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.num_examples is not None and self.num_examples < 1) or self.eta < 0:
            raise ValueError("num_examples must be positive (the training split's size) and eta >= 0")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight (a) must be in [0, 1], got {self.distill_weight}")

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        if self.num_examples is None:
            raise ValueError("dcs needs num_examples (the job sets it through bind)")
        return student_params, {"weights": jnp.ones((self.num_examples,), jnp.float32)}

    def check(self, config):
        require_kind(self.name, config, "classifier")  # per-example weights: batches carry `index`

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        index, labels = batch["index"], batch["labels"]
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_logits = teacher(batch["inputs"], **lm_kwargs(batch)).logits
        weights = recipe_state["weights"].at[index].get(mode="clip")
        loss = dcs_loss(
            student_logits,
            teacher_logits,
            labels,
            weights,
            distill_weight=self.distill_weight,
            temperature=self.temperature,
            scale_by_temperature_squared=self.scale_by_temperature_squared,
        )
        disagreement = jax.lax.stop_gradient(dcs_disagreement(student_logits, teacher_logits, kind=self.kind))
        metrics = {
            "dcs": loss,
            "accuracy": token_accuracy(student_logits, labels),
            "disagreement": disagreement.mean(),
            "max_weight": recipe_state["weights"].max(),
        }
        # (sum_b w_b l_b, sum_b w_b): accumulated micro-batches normalise by the whole batch's weight
        return (loss * weights.sum(), weights.sum()), metrics, {"index": index, "disagreement": disagreement}

    def update_state(self, recipe_state, statistics):
        """w <- w * exp(eta * d) on the whole batch's examples, renormalised (once per optimizer step)."""
        table = recipe_state["weights"]
        full = jnp.zeros_like(table).at[statistics["index"]].set(statistics["disagreement"], mode="drop")
        return {"weights": dcs_update_weights(table, full, self.eta)}

"""Quantized distillation (Polino, Pascanu & Alistarh 2018, "Model compression via distillation and quantization").

The student keeps full-precision weights w; its forward and backward passes run at the quantized weights Q(w)
(uniform min-max quantisation per bucket of `bucket_size` consecutive weights, 2^bits levels, deterministic
rounding: `jdistill.losses.quantize`), and the gradient taken at Q(w) is applied to w (straight-through:
dQ/dw = identity, `quantize_ste`). Only the weight matrices (floating leaves with ndim >= 2: kernels, embeddings)
are quantized; norm scales and biases stay in full precision. The loss is the paper's KD objective

    loss = distill_weight * T^2 * KL(p_t || p_s at T) + (1 - distill_weight) * CE(y, s),

defaults distill_weight = 0.7 and T = 2, as in the official code (`losses.quantized_distillation_loss`). Token-level for
LMs: (sum, count) over valid tokens.

Evaluation: the job's evaluation runs the quantized weights Q(w), the deployed model (the eval step runs the
recipe's `forward_params`), so the stage's accuracy and NLL are the quantized student's, the numbers the paper
reports; `extra_metrics` records the same two under the explicit names `quantized_accuracy` and `quantized_nll`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill import losses
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import add_stats, prediction_stats, summarize, token_accuracy
from jdistill.recipes.base import RecipeBase


def is_weight_matrix(leaf) -> bool:
    """The leaves that are quantized: floating arrays with at least two dimensions."""
    return jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating) and jnp.ndim(leaf) >= 2


@dataclasses.dataclass(frozen=True)
class QuantizedDistillation(RecipeBase):
    """Quantized distillation (Polino et al. 2018): forward at straight-through Q(w), 0.7*T^2*KL + 0.3*CE."""

    bits: int = 4
    bucket_size: int | None = 256
    temperature: float = 2.0
    distill_weight: float = 0.7
    name: str = "quantized"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 32:
            raise ValueError(f"bits must be an integer in [1, 32], got {self.bits!r}")
        if self.bucket_size is not None and (not isinstance(self.bucket_size, int) or self.bucket_size < 1):
            raise ValueError(f"bucket_size must be a positive integer or null, got {self.bucket_size!r}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(
                f"distill_weight must be in [0, 1] (CE weight = 1 - distill_weight), got {self.distill_weight!r}"
            )

    def quantize(self, params):
        """Q(w) on every weight matrix, straight-through (value Q(w), gradient of the identity)."""
        return jax.tree.map(
            lambda x: losses.quantize_ste(x, self.bits, self.bucket_size) if is_weight_matrix(x) else x, params
        )

    def forward_params(self, params):
        return self.quantize(params)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        student_logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        teacher_logits = teacher(batch["inputs"], **lm_kwargs(batch)).logits
        total, count = losses.quantized_distillation_loss(
            student_logits,
            teacher_logits,
            labels,
            self.temperature,
            distill_weight=self.distill_weight,
            mask=mask,
            reduction="sum_count",
        )
        metrics = {"accuracy": token_accuracy(student_logits, labels, mask)}
        return (total, count), metrics, ()

    def extra_metrics(self, model, eval_batches, rng) -> dict:
        """Accuracy and NLL of the quantized student (the deployed model) on the evaluation batches."""
        del rng
        graphdef, params = nnx.split(model)

        @jax.jit
        def stats(params, batch):
            quantized = nnx.merge(graphdef, self.quantize(params))
            labels, mask = targets_and_mask(batch)
            return prediction_stats(quantized(batch["inputs"], **lm_kwargs(batch)).logits, labels, mask)

        total = None
        for batch in eval_batches:
            total = add_stats(total, jax.device_get(stats(params, batch)))
        if total is None:
            return {}
        summary = summarize(total)
        return {f"quantized_{key}": summary[key] for key in ("accuracy", "nll") if key in summary}

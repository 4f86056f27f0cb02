"""SLA + self-distillation (Lee et al. 2020, "Self-supervised Label Augmentation via Input Transformations";
docs/methods.md#sla-and-self-distillation; the official code's `sla_sd` mode).

Every image is shown under M = 4 rotations (0, 90, 180, 270 degrees, made inside the step); a joint head
classifies (class, rotation) pairs, joint label y * M + j, and a single head classifies the plain label:

    z_j    = joint head on rotation j of x                        ([M, batch, num_classes * M])
    agg[y] = 1/M sum_j z_j[y * M + j]                             (`losses.sla_aggregate`)
    L      = CE(z, y * M + j) + CE(single(x), y) + T^2 KL(softmax(agg / T) || softmax(single / T)),  agg detached

(`losses.sla_self_distillation_loss`). The trained module is `SLAStudent` (`wraps_student`): the student's
transformer with its classifier widened to `num_classes * M` outputs (the joint head; `student.model.num_classes`
stays the number of original classes, so the config and the label-only baseline are unchanged) plus a linear
single head on the same pooled features. Evaluation: calling the module returns the single head's
`num_classes` logits (one forward pass, the paper's fast "SLA+SD" inference), so the stage's accuracy/NLL/ECE are
the single head's; `extra_metrics` adds `aggregated_accuracy`, the joint head's prediction aggregated over the M
rotations (the paper's "SLA+AG", M forward passes).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.eval.metrics import token_accuracy
from jdistill.losses import sla_aggregate, sla_self_distillation_loss
from jdistill.models import Transformer
from jdistill.nn.params import dense
from jdistill.recipes.base import RecipeBase, require_images


def rotations(images, count: int):
    """`[count, batch, H, W, C]`: the images rotated by j * 90 degrees, j = 0 .. count - 1 (square images)."""
    return jnp.stack([jnp.rot90(images, j, axes=(1, 2)) for j in range(count)])


class SLAStudent(nnx.Module):
    """A transformer whose head is the joint (class, transform) head, plus a single-label linear head."""

    def __init__(self, config, n_transforms: int, *, rngs: nnx.Rngs):
        self.num_classes, self.n_transforms = config.num_classes, n_transforms
        self.backbone = Transformer(
            dataclasses.replace(config, num_classes=config.num_classes * n_transforms), rngs=rngs
        )
        self.single = dense(config.d_model, config.num_classes, ("embed", "vocab"), rngs=rngs)

    def __call__(self, inputs, **kwargs):
        """The backbone's output with `logits` from the single head (what evaluation scores)."""
        out = self.backbone(inputs, **kwargs)
        return out.replace(logits=self.single(out.features).astype(jnp.float32))

    def joint_and_single(self, inputs):
        """(joint logits `[M, batch, classes * M]` over the rotations, single logits `[batch, classes]` on the
        untransformed inputs), from one forward pass over the M rotated copies."""
        views = rotations(inputs, self.n_transforms)
        m, batch = views.shape[:2]
        out = self.backbone(views.reshape(m * batch, *views.shape[2:]))
        joint = out.logits.reshape(m, batch, -1)
        single = self.single(out.features[:batch]).astype(jnp.float32)
        return joint, single

    def aggregated_logits(self, inputs):
        """SLA+AG: the joint logits aggregated over the rotations, `[batch, num_classes]`."""
        joint, _ = self.joint_and_single(inputs)
        return sla_aggregate(joint, self.num_classes, self.n_transforms)


@dataclasses.dataclass(frozen=True)
class SLASelfDistillation(RecipeBase):
    """SLA+SD (Lee et al. 2020): joint (class, rotation) labels; a single head distils the aggregated prediction."""

    n_transforms: int = 4
    temperature: float = 1.0
    name: str = "sla_sd"
    teacher_policy: str = "self"

    def __post_init__(self):
        if not 1 <= self.n_transforms <= 4:
            raise ValueError(f"n_transforms (rotations by 90 degrees) must be in 1..4, got {self.n_transforms}")

    def check(self, config):
        require_images(self.name, config)

    def wraps_student(self):
        return lambda model_config, rngs: SLAStudent(model_config, self.n_transforms, rngs=rngs)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        labels = batch["labels"]
        joint, single = student.joint_and_single(batch["inputs"])
        loss = sla_self_distillation_loss(joint, single, labels, temperature=self.temperature)
        aggregated = sla_aggregate(joint, single.shape[-1], self.n_transforms)
        metrics = {
            "sla_sd": loss,
            "accuracy": token_accuracy(single, labels),
            "aggregated_accuracy": token_accuracy(aggregated, labels),
        }
        return loss, metrics, ()

    def extra_metrics(self, model, eval_batches, rng):
        del rng
        aggregate = nnx.jit(lambda model, x: model.aggregated_logits(x))
        correct = total = 0.0
        for batch in eval_batches:
            hits = np.asarray(aggregate(model, batch["inputs"]).argmax(-1)) == np.asarray(batch["labels"])
            valid = np.asarray(batch.get("mask", np.ones_like(hits)), np.float64)
            correct += float((hits * valid).sum())
            total += float(valid.sum())
        return {"aggregated_accuracy": correct / max(total, 1.0)}

"""Online mutual distillation of peer students (Zhang et al. 2018, "Deep Mutual Learning";
docs/methods.md#deep-mutual-learning,
the cross-distillation part of MOKD, Song et al. 2023).

K peers (default 2) train together from scratch, no pre-trained teacher; every peer k learns from the labels and
from the current predictions of the others, which are treated as fixed targets (stop_gradient):

    L_k = label_weight * CE(y, z_k) + distill_weight * T^2 * 1/(K-1) * sum_{l != k} KL(p_l || p_k),
    L   = sum_k L_k       (the peers' parameters are disjoint, so each peer receives exactly dL_k)

with p = softmax(z / T) (`jdistill.losses.kd` per pair). DML uses T = 1 and weights 1; the preset does too.
The trained module is `PeerStudents` (`wraps_student`): K transformers of the student config; its `__call__`
returns the first peer's output, so the stage's evaluation reports peer 0 (the others are in the train metrics).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.eval.metrics import token_accuracy
from jdistill.losses import kd
from jdistill.models import Transformer
from jdistill.recipes.base import RecipeBase, require_kind


class PeerStudents(nnx.Module):
    """`num_peers` independently initialised transformers; calling it runs the first one."""

    def __init__(self, config, num_peers: int, *, rngs: nnx.Rngs):
        self.peers = nnx.List([Transformer(config, rngs=rngs) for _ in range(num_peers)])

    def __call__(self, inputs, **kwargs):
        return self.peers[0](inputs, **kwargs)

    def all_logits(self, inputs):
        """`[num_peers, batch, classes]`."""
        return jnp.stack([peer(inputs).logits for peer in self.peers])


def mutual_loss(logits, labels, *, temperature, distill_weight, label_weight):
    """sum_k [label_weight CE(y, z_k) + distill_weight T^2 mean_{l != k} KL(sg(p_l) || p_k)] for `[K, batch, V]`."""
    count = logits.shape[0]
    per_pair = 1.0 / (count - 1)
    total: jax.Array | float = 0.0
    for k in range(count):
        for other in range(count):
            if other != k:
                total = total + kd(
                    logits[k],
                    jax.lax.stop_gradient(logits[other]),
                    labels,
                    temperature=temperature,
                    distill_weight=distill_weight * per_pair,
                    label_weight=label_weight * per_pair,
                )
    return total


@dataclasses.dataclass(frozen=True)
class MutualLearning(RecipeBase):
    """Deep mutual learning (Zhang et al. 2018): peer students teach each other online, CE + T^2 KL each."""

    num_peers: int = 2
    temperature: float = 1.0
    distill_weight: float = 1.0
    label_weight: float = 1.0
    name: str = "mutual"
    teacher_policy: str = "self"

    def __post_init__(self):
        if self.num_peers < 2:
            raise ValueError(f"num_peers must be at least 2, got {self.num_peers}")

    def check(self, config):
        require_kind(self.name, config, "classifier")  # peers are compared on class labels

    def wraps_student(self):
        return lambda model_config, rngs: PeerStudents(model_config, self.num_peers, rngs=rngs)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        labels = batch["labels"]
        logits = student.all_logits(batch["inputs"])
        loss = mutual_loss(
            logits,
            labels,
            temperature=self.temperature,
            distill_weight=self.distill_weight,
            label_weight=self.label_weight,
        )
        metrics = {f"accuracy_peer{k}": token_accuracy(logits[k], labels) for k in range(self.num_peers)}
        metrics["accuracy"] = metrics["accuracy_peer0"]
        return loss, metrics, ()

"""The recipe interface: a teacher policy, recipe state, and a pure loss.

A recipe never edits the train step. The step calls, inside one jitted function:

    teacher_output = stop_gradient(teacher(batch))         # when recipe.teacher_policy != "none"
    loss, metrics, new_state = recipe.loss(student_output, teacher_output, recipe_state, batch, rng)

Batches are dicts: classifiers carry `labels [batch]`; LMs carry `targets [batch, seq]` and `mask [batch, seq]`.
"""

from __future__ import annotations

from typing import Any, Protocol

TEACHER_POLICIES = ("frozen", "ema", "previous_epoch", "random_init", "snapshots", "cached_topk", "self", "none")


def targets_and_mask(batch: dict):
    """(integer targets, mask or None) for either batch layout."""
    if "targets" in batch:
        return batch["targets"], batch.get("mask")
    return batch["labels"], batch.get("mask")


class Recipe(Protocol):
    """What the train step needs from a recipe."""

    name: str
    teacher_policy: str

    def init_state(self) -> Any:
        """Recipe state carried across steps (a pytree; `()` when stateless)."""

    def loss(self, student_output, teacher_output, recipe_state, batch: dict, rng) -> tuple[Any, dict, Any]:
        """(scalar loss, metrics dict of scalars, new recipe state)."""

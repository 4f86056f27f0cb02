"""Multi-student distillation (Song et al. 2024, "Multi-student Diffusion Distillation for Better One-step
Generators"): the condition space is split over several one-step students, each distilled (here with SiD or DMD)
only on its own share of the conditions, and a sample is drawn by the student that owns its condition
(docs/diffusion_generators.md). With the classes as conditions, student k of S owns the contiguous block

    classes(k) = { c : floor(c S / C) = k },   C the number of classes,

so every class has exactly one owner (`owner`), and a batch with mixed labels is drawn by running each student on
the batch and keeping, per example, its owner's sample (`select`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def owner(labels: Array, num_students: int, num_classes: int) -> Array:
    """The student that owns each label, floor(label S / C) `[batch]`."""
    return (jnp.asarray(labels) * num_students) // num_classes


def classes_of(student: int, num_students: int, num_classes: int) -> tuple[int, ...]:
    """The classes student `student` of `num_students` is distilled on."""
    return tuple(c for c in range(num_classes) if (c * num_students) // num_classes == student)


def select(samples: Array, labels: Array, num_classes: int) -> Array:
    """`samples [S, batch, ...]` (student k's sample of every example) -> `[batch, ...]`: each example's owner's."""
    index = owner(labels, samples.shape[0], num_classes)
    return jnp.take_along_axis(samples, index.reshape(1, -1, *([1] * (samples.ndim - 2))), axis=0)[0]

"""Batch transforms for training pipelines, seeded per step so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BatchTransform = Callable[[dict, np.random.Generator], dict]


def random_shift(max_shift: int = 1) -> BatchTransform:
    """Translate each image by an integer offset in [-max_shift, max_shift] per axis, zero-filling the border.

    Images `[batch, height, width, channels]`; the offset is drawn independently for every example.
    """

    def transform(batch: dict, rng: np.random.Generator) -> dict:
        images = batch["inputs"]
        size, height, width = images.shape[:3]
        padded = np.pad(images, [(0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)])
        dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, size))
        rows = dy[:, None] + np.arange(height)[None, :]
        cols = dx[:, None] + np.arange(width)[None, :]
        shifted = padded[np.arange(size)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return dict(batch, inputs=shifted)

    return transform


AUGMENTATIONS = {"none": None, "shift": random_shift(1)}


def seeded(transform: BatchTransform, seed: int) -> Callable[[int, dict], dict]:
    """`(step, batch) -> transformed batch` with a generator keyed on (seed, step)."""

    def apply(step: int, batch: dict) -> dict:
        return transform(batch, np.random.default_rng([seed, step]))

    return apply

"""Symmetric label noise on a job's training batches (the `label-noise-xi` claim's setting).

A fraction `rate` of the training examples, chosen once per seed, get a wrong label drawn uniformly from the
other K - 1 classes; the rest keep theirs. The choice is a fixed function of the example's position in the
training split (the batches' `index` field), so every stage of a job and every epoch sees the same noisy labels,
as a noisy dataset would. Evaluation batches keep their clean labels (the claim is about clean test accuracy).
"""

from __future__ import annotations

import numpy as np

from jdistill.errors import ConfigError

NOISE_STREAM = 18  # folded into the seed: the noise draw is not the data order's


def noisy_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """`labels` with exactly round(rate * n) entries, chosen by `seed`, moved to a uniformly drawn other class."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"noise={rate}: expected a label-noise rate in [0, 1]")
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng([seed, NOISE_STREAM])
    flipped = rng.permutation(len(labels))[: round(rate * len(labels))]
    noisy = labels.copy()
    shift = rng.integers(1, num_classes, size=len(flipped))  # 1 .. K-1: never the true class
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy


def label_noise_fn(train_labels: np.ndarray, rate: float, num_classes: int, seed: int):
    """`dataset_fn(dataset) -> dataset` for `run_job(dataset_fns=...)`: each batch's `labels` replaced by the noisy
    label of its `index`."""
    table = noisy_labels(train_labels, rate, num_classes, seed).astype(np.int32)

    def with_noise(batch: dict) -> dict:
        return dict(batch, labels=table[np.asarray(batch["index"])])

    return lambda dataset: dataset.map(with_noise)

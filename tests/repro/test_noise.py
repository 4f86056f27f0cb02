"""Symmetric label noise: exactly the requested fraction, always a wrong class, fixed per seed, applied by index.

Broken on purpose: the shift drawn from 0 .. K-1 (a "flipped" label may stay right), the fraction rounded down to a
per-example coin flip, the batch's own labels used instead of the table (noise that moves with the data order)."""

import numpy as np
import pytest

from jdistill.errors import ConfigError
from jdistill.repro.noise import label_noise_fn, noisy_labels

LABELS = np.arange(1000) % 10


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 1.0])
def test_exactly_the_rate_of_labels_moves_to_another_class(rate):
    noisy = noisy_labels(LABELS, rate, 10, seed=3)
    assert np.sum(noisy != LABELS) == round(rate * len(LABELS))
    assert noisy.min() >= 0 and noisy.max() <= 9


def test_flipped_labels_spread_uniformly_over_the_other_classes():
    noisy = noisy_labels(np.zeros(20000, int), 1.0, 10, seed=0)
    counts = np.bincount(noisy, minlength=10)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] / 20000 - 1 / 9) < 0.01)


def test_the_draw_is_fixed_by_the_seed():
    assert np.array_equal(noisy_labels(LABELS, 0.5, 10, 1), noisy_labels(LABELS, 0.5, 10, 1))
    assert not np.array_equal(noisy_labels(LABELS, 0.5, 10, 1), noisy_labels(LABELS, 0.5, 10, 2))


def test_a_rate_outside_0_1_is_a_config_error():
    with pytest.raises(ConfigError, match=r"noise=1\.5"):
        noisy_labels(LABELS, 1.5, 10, 0)


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def map(self, fn):
        return _Batches([fn(b) for b in self.batches])


def test_the_dataset_fn_relabels_each_batch_by_example_index():
    table = noisy_labels(LABELS, 0.5, 10, 7)
    index = np.array([5, 999, 0, 5], np.int32)
    batch = {"inputs": np.zeros((4, 2)), "labels": LABELS[index], "index": index}
    (out,) = label_noise_fn(LABELS, 0.5, 10, 7)(_Batches([batch])).batches
    assert np.array_equal(out["labels"], table[index]) and out["inputs"] is batch["inputs"]

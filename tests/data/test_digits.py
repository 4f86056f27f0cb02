"""The `digits` builder: split sizes, value ranges, traceability to scikit-learn, determinism."""

import numpy as np
from sklearn.datasets import load_digits

from jdistill.data import load_source
from jdistill.data.builders.digits import split_row_indices

from .conftest import all_examples


def test_split_sizes(digits_train, digits_test):
    assert (len(digits_train), len(digits_test)) == (1437, 360)


def test_images_are_uint8_8x8x1_in_0_to_16(digits_train):
    images = np.stack([example["image"] for example in all_examples(digits_train)])
    assert images.dtype == np.uint8 and images.shape == (1437, 8, 8, 1)
    assert images.min() == 0 and images.max() == 16


def test_labels_in_0_to_9(digits_train, digits_test):
    examples = all_examples(digits_train) + all_examples(digits_test)
    labels = {example["label"] for example in examples}
    assert labels == set(range(10))


def test_ids_follow_the_documented_split(digits_train, digits_test):
    expected = split_row_indices()
    for source, split in ((digits_train, "train"), (digits_test, "test")):
        assert sorted(example["id"] for example in all_examples(source)) == sorted(expected[split])


def test_examples_match_sklearn_rows(digits_test):
    digits = load_digits()
    for example in all_examples(digits_test):
        np.testing.assert_array_equal(example["image"][..., 0], digits.images[example["id"]])
        assert example["label"] == digits.target[example["id"]]


def test_building_twice_gives_identical_examples(data_dir, rebuilt_data_dir):
    for split in ("train", "test"):
        first = all_examples(load_source("digits", split, data_dir))
        second = all_examples(load_source("digits", split, rebuilt_data_dir))
        assert [example["id"] for example in first] == [example["id"] for example in second]
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
            assert a["label"] == b["label"]

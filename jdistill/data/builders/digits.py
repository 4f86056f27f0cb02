"""tfds builder `digits`: scikit-learn's 8x8 handwritten digits (shipped with it, so offline).

Splits are fixed and deterministic: `np.random.default_rng(0).permutation(1797)`; the first 1437 row
indices are `train`, the remaining 360 are `test`. The `id` feature is the row index in
`sklearn.datasets.load_digits()`, so every example can be traced back to its source.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN = 1437
IMAGE_MAX_VALUE = 16
SPLIT_SEED = 0


def split_row_indices() -> dict[str, np.ndarray]:
    """Row indices of `load_digits()` per split, from a `default_rng(SPLIT_SEED)` permutation."""
    permutation = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {"train": permutation[:NUM_TRAIN], "test": permutation[NUM_TRAIN:]}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits as a tfds dataset (uint8 images with values 0..16)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 1437 train / 360 test from a default_rng(0) permutation.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The UCI optical handwritten digits as shipped with scikit-learn "
                "(sklearn.datasets.load_digits): 1797 grayscale 8x8 images, pixel values 0..16, "
                "10 classes. Fixed split: np.random.default_rng(0).permutation(1797), first 1437 "
                "rows train, remaining 360 test. `id` is the row index in load_digits()."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(image_max_value=IMAGE_MAX_VALUE),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with scikit-learn; nothing to download.
        return {split: self._generate_examples(row_indices) for split, row_indices in split_row_indices().items()}

    def _generate_examples(self, row_indices):
        from sklearn.datasets import load_digits  # Deferred: only needed while building.

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., np.newaxis]
        for row in row_indices:
            yield (
                int(row),
                {
                    "image": images[row],
                    "label": int(digits.target[row]),
                    "id": int(row),
                },
            )

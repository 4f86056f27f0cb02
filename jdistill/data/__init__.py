"""Data sources (embedded offline datasets, prepared `tfds:` datasets) and grain pipelines.

source = load_source("digits", "train", data_dir=None)
train = classification_train_dataset(source, seed=0, batch_size=32)   # train[step] -> batch
evaluation = classification_eval_batches(load_source("digits", "test"), batch_size=64)
"""

from jdistill.data.lm import VOCAB_SIZE, lm_eval_batches, lm_train_dataset, packed_stream
from jdistill.data.pipeline import classification_eval_batches, classification_train_dataset
from jdistill.data.sources import EMBEDDED, load_source, resolve_data_dir

__all__ = [
    "EMBEDDED",
    "VOCAB_SIZE",
    "classification_eval_batches",
    "classification_train_dataset",
    "lm_eval_batches",
    "lm_train_dataset",
    "load_source",
    "packed_stream",
    "resolve_data_dir",
]

"""Data sources (embedded offline datasets, prepared `tfds:` datasets, local files) and grain pipelines.

source = load_source("digits", "train", data_dir=None)
train = classification_train_dataset(source, seed=0, batch_size=32)   # train[step] -> batch
evaluation = classification_eval_batches(load_source("digits", "test"), batch_size=64)
windows = lm_windows(data_config, "train")      # packed LM windows of a tokenised split (docs/data.md)
"""

from jdistill.data.lm import lm_eval_batches, lm_train_dataset, lm_windows, tokenized_dir
from jdistill.data.pipeline import classification_eval_batches, classification_train_dataset
from jdistill.data.sources import EMBEDDED, load_source, resolve_data_dir

__all__ = [
    "EMBEDDED",
    "classification_eval_batches",
    "classification_train_dataset",
    "lm_eval_batches",
    "lm_train_dataset",
    "lm_windows",
    "load_source",
    "resolve_data_dir",
    "tokenized_dir",
]

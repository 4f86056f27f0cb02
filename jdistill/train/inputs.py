"""Which pipeline feeds a stage: classification batches for classifiers, packed byte windows for LMs."""

from __future__ import annotations

import functools

import grain
import jax

from jdistill import data
from jdistill.data.transforms import AUGMENTATIONS


def _source(data_config, split: str):
    return data.load_source(data_config.name, split, data_config.dir)


def train_dataset(data_config, model_config, train_config, seed: int) -> grain.MapDataset:
    """Random-access batches: element `step` is this host's share of the global batch for step `step`."""
    source = _source(data_config, "train")
    per_host = train_config.batch_size // jax.process_count()
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if model_config.kind == "lm":
        return data.lm_train_dataset(source, seq_len=data_config.seq_len, seed=seed, batch_size=per_host, **shard)
    transform = AUGMENTATIONS[train_config.augment]
    return data.classification_train_dataset(source, seed=seed, batch_size=per_host, transform=transform, **shard)


def train_examples(data_config, kind: str) -> int:
    """Training examples per epoch: images, or `seq_len`-token windows of the LM stream."""
    source = _source(data_config, "train")
    if kind == "lm":
        return max(len(data.packed_stream(source)) // data_config.seq_len, 1)
    return len(source)


def batches_from(dataset: grain.MapDataset, start: int, stop: int):
    """Iterate steps `[start, stop)` with background prefetching."""
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)
    return iter(dataset[start:stop].to_iter_dataset(options))


@functools.lru_cache(maxsize=8)
def eval_batches(data_config, kind: str, split: str = "test") -> tuple[dict, ...]:
    """The evaluation split as padded batches (cached: every evaluation of a job sees the same batches)."""
    source = _source(data_config, split)
    if kind == "lm":
        batches = data.lm_eval_batches(
            source,
            seq_len=data_config.seq_len,
            batch_size=data_config.eval_batch_size,
            max_batches=data_config.eval_max_batches,
        )
    else:
        batches = data.classification_eval_batches(source, batch_size=data_config.eval_batch_size)
        if data_config.eval_max_batches is not None:
            batches = (b for i, b in enumerate(batches) if i < data_config.eval_max_batches)
    return tuple(batches)

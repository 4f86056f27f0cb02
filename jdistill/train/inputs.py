"""Which pipeline feeds a stage: classification batches for classifiers, packed token windows (or prompt/completion
pairs, for recipes with `batch_layout = "prompt_completion"`) for LMs (docs/data.md)."""

from __future__ import annotations

import functools

import grain
import jax
import numpy as np

from jdistill import data
from jdistill.data.transforms import AUGMENTATIONS
from jdistill.errors import DataError


def _source(data_config, split: str):
    return data.load_source(data_config.name, split, data_config.dir)


def check_lm_vocab(data_config, model_config) -> None:
    """A `DataError` when the tokenised data holds ids the model cannot embed (tokenizer vocab > vocab_size)."""
    split = data.lm.open_split(data.lm.config_dir(data_config), "train")
    tokenizer = split.metadata["tokenizer"]
    if tokenizer["vocab_size"] > model_config.vocab_size:
        raise DataError(
            f"data.tokenizer {tokenizer['spec']!r} has {tokenizer['vocab_size']} ids but model.vocab_size is "
            f"{model_config.vocab_size}; set model.vocab_size >= {tokenizer['vocab_size']}"
        )


def check_data(config, recipe) -> None:
    """The data errors a job can hit, before any stage trains: an image dataset is opened; LM data is tokenised (once,
    into the cache) and checked against both models' vocabularies and, for prompt/completion recipes, the prompt
    width."""
    if config.student.model.kind != "lm":
        _source(config.data, "train")  # the dataset exists (an unprepared tfds: dataset is one line)
        return
    from jdistill.train.teacher_tokens import teacher_data_config

    check_lm_vocab(config.data, config.student.model)
    check_lm_vocab(teacher_data_config(config), config.teacher.model)  # a uld teacher's own tokenizer
    eval_batches(config.data, "lm")  # its windows hold scored tokens
    if recipe.batch_layout == "prompt_completion":
        prompt_examples(config.data)


def prompt_examples(data_config, split: str = "train"):
    from jdistill.data.prompts import PromptCompletionExamples

    tokenized = data.lm.open_split(data.lm.config_dir(data_config), split)
    completion_len = data_config.seq_len - data_config.prompt_len
    skip_long = data_config.long_prompts == "skip"
    return PromptCompletionExamples(tokenized, data_config.prompt_len, completion_len, skip_long=skip_long)


def train_dataset(data_config, model_config, train_config, seed: int, layout: str = "packed") -> grain.MapDataset:
    """Random-access batches: element `step` is this host's share of the global batch for step `step`."""
    per_host = train_config.batch_size // jax.process_count()
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if model_config.kind == "lm":
        check_lm_vocab(data_config, model_config)
        if layout == "prompt_completion":
            from jdistill.data.prompts import prompt_train_dataset

            return prompt_train_dataset(prompt_examples(data_config), seed=seed, batch_size=per_host, **shard)
        return data.lm_train_dataset(data.lm_windows(data_config, "train"), seed=seed, batch_size=per_host, **shard)
    source = _source(data_config, "train")
    transform = AUGMENTATIONS[train_config.augment]
    return data.classification_train_dataset(source, seed=seed, batch_size=per_host, transform=transform, **shard)


def train_examples(data_config, kind: str, layout: str = "packed") -> int:
    """Training examples per epoch: images, `seq_len`-token LM windows, or prompt/completion pairs."""
    if kind == "lm":
        if layout == "prompt_completion":
            return len(prompt_examples(data_config))
        return max(len(data.lm_windows(data_config, "train")), 1)
    return len(_source(data_config, "train"))


def batches_from(dataset: grain.MapDataset, start: int, stop: int):
    """Iterate steps `[start, stop)` with background prefetching."""
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)
    return iter(dataset[start:stop].to_iter_dataset(options))


@functools.lru_cache(maxsize=8)
def eval_batches(data_config, kind: str, split: str = "test") -> tuple[dict, ...]:
    """The evaluation split as padded batches (cached: every evaluation of a job sees the same batches). LM
    evaluation is always packed (prompt/completion sources: the loss mask on the completions); LM batches without
    a single scored token are a one-line DataError (checked by `check_data` before any stage)."""
    if kind == "lm":
        lm_batches = tuple(
            data.lm_eval_batches(
                data.lm_windows(data_config, split, include_partial_tail=True),
                batch_size=data_config.eval_batch_size,
                max_batches=data_config.eval_max_batches,
            )
        )
        if not any(np.asarray(batch["mask"]).any() for batch in lm_batches):
            raise DataError(
                f"data.eval_max_batches={data_config.eval_max_batches} x data.eval_batch_size="
                f"{data_config.eval_batch_size}: the evaluation windows of {data_config.name} ({split}) hold no scored "
                "token (e.g. only prompts); evaluate more batches"
            )
        return lm_batches
    else:
        batches = data.classification_eval_batches(_source(data_config, split), batch_size=data_config.eval_batch_size)
        if data_config.eval_max_batches is not None:
            batches = (b for i, b in enumerate(batches) if i < data_config.eval_max_batches)
    return tuple(batches)

"""A stage's evaluation: summed prediction statistics over the evaluation batches, the recipe's extras, and (LM
stages) the greedy completions of `samples.jsonl`."""

from __future__ import annotations

import dataclasses
import time

import jax
from flax import nnx

from jdistill.errors import DataError
from jdistill.eval.batch import targets_and_mask
from jdistill.eval.metrics import add_stats, summarize, target_bytes
from jdistill.eval.samples import encode_prompts, sample_records, stage_prompts, write_samples
from jdistill.io import fs
from jdistill.models import Transformer
from jdistill.text import BytesTokenizer, load_tokenizer
from jdistill.train import inputs
from jdistill.train.step import make_eval_step


def evaluate(eval_step, params, batches, *, kind: str, byte_lengths=None) -> dict:
    """Accuracy / NLL / ECE of `params` over `batches`; for LMs also perplexity and bits per byte.

    Every statistic is a sum over the scored positions (see `jdistill.eval.metrics`), so the result does not
    depend on how the split is cut into batches. `byte_lengths [vocab]`: UTF-8 bytes per token id
    (`Tokenizer.token_byte_lengths()`; default for LMs: the byte-level tokenizer's).
    """
    if kind == "lm" and byte_lengths is None:
        byte_lengths = BytesTokenizer().token_byte_lengths()
    total = None
    for batch in batches:
        stats = jax.device_get(eval_step(params, batch))
        if byte_lengths is not None:
            targets, mask = targets_and_mask(batch)
            stats = dict(stats, bytes=target_bytes(targets, mask, byte_lengths))
        total = add_stats(total, stats)
    if total is None:
        raise DataError("evaluation got no batches: the evaluation split is empty")
    if "bin_count" not in total:  # a recipe's own sums (RecipeBase.eval_stats): each sum per counted example
        count = max(float(total["count"]), 1.0)
        return dict({key: float(value) / count for key, value in total.items() if key != "count"}, count=int(count))
    return summarize(total)


def final_metrics(metrics: dict, recipe, graphdef, params, eval_batches, rng) -> dict:
    """The stage's last evaluation plus the recipe's own end-of-stage metrics (probes, robust accuracy ...)."""
    return dict(metrics, **recipe.extra_metrics(nnx.merge(graphdef, params), eval_batches, rng))


def run_tokenizer(data_config):
    """The tokenizer that made the run's token ids (`data.tokenizer`): it scores bits per byte, decodes samples."""
    return load_tokenizer(data_config.tokenizer)


def check_samples(config) -> None:
    """`run.sample_prompts` fit the LM stages' models (a one-line ConfigError otherwise): checked by the job
    before its run directory is written; each stage checks its own model again when it starts."""
    models = [stage.model for stage in (config.teacher, config.student) if stage.model.kind == "lm"]
    if models and config.run.sample_tokens and config.run.sample_prompts:
        max_len = min(model.max_seq_len for model in models)
        encode_prompts(run_tokenizer(config.data), config.run.sample_prompts, max_len=max_len)


def stage_sampler(run_config, tokenizer, eval_batches, *, max_seq_len: int):
    """None when the stage writes no samples (not an LM, no run config, `run.sample_tokens` 0); else
    `sample(stage_dir, stage_name, model)`, which writes `stage_dir/samples.jsonl` (see `jdistill.eval.samples`).

    The prompts are encoded here, before the stage trains, so one that does not fit fails before any compute.
    Every process generates (the parameters may be sharded over all of them); process 0 writes.
    """
    if tokenizer is None or run_config is None or run_config.sample_tokens == 0:
        return None
    prompts, texts = stage_prompts(run_config, tokenizer, eval_batches, max_seq_len=max_seq_len)

    def sample(stage_dir, name: str, model) -> None:
        if not prompts or not isinstance(model, Transformer):  # e.g. peer students: no single decoder
            return
        records = sample_records(
            model, tokenizer, prompts, texts=texts, max_new_tokens=run_config.sample_tokens, stage=name
        )
        if jax.process_index() == 0:
            write_samples(fs.path(stage_dir) / "samples.jsonl", records)

    return sample


def stage_evaluation(data_config, model_config, run_config, graphdef, forward_params=None, eval_stats=None):
    """(score, sampler, eval batches) of a stage: `score(params) -> metrics` over the held-out batches (bits per
    byte with the run tokenizer's byte lengths; the recipe's `eval_stats` sums when given), `sampler` as
    `stage_sampler` (None for classifiers)."""
    kind = model_config.kind
    eval_step = make_eval_step(graphdef, forward_params, eval_stats)
    eval_batches = inputs.eval_batches(data_config, kind)
    tokenizer = run_tokenizer(data_config) if kind == "lm" else None
    byte_lengths = None if tokenizer is None else tokenizer.token_byte_lengths()

    def score(params) -> dict:
        return evaluate(eval_step, params, eval_batches, kind=kind, byte_lengths=byte_lengths)

    sampler = stage_sampler(run_config, tokenizer, eval_batches, max_seq_len=model_config.max_seq_len)
    return score, sampler, eval_batches


def evaluate_loaded(result, config, stage_dir, model_config=None):
    """A model loaded, not trained (a StageResult without metrics: a teacher from `teacher.init_from`, a pruned
    student) scored like a trained LM stage: its metrics, and `stage_dir/samples.jsonl`. `model_config`: its model
    (default: the teacher's). Classifiers are returned as they are."""
    model_config = config.teacher.model if model_config is None else model_config
    if model_config.kind != "lm":
        return result
    started = time.perf_counter()
    score, sampler, _ = stage_evaluation(config.data, model_config, config.run, result.graphdef)
    metrics = score(result.params)
    if sampler is not None:
        fs.path(stage_dir).mkdir(parents=True, exist_ok=True)
        sampler(stage_dir, result.name, nnx.merge(result.graphdef, result.params))
    return dataclasses.replace(result, metrics=metrics, wall_seconds=time.perf_counter() - started)

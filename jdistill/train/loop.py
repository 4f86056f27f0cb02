"""Train one stage: build it (`jdistill.train.stage`), resume it, run the jitted step over the grain pipeline
with periodic evaluation and checkpoints, evaluate it.

A stage is resumable: its state is restored from the newest checkpoint in `stage_dir/checkpoints`, the data
pipeline is indexed by step and the step keys are derived from (seed, step), so the resumed run reproduces the
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jdistill.progress import StepBar
from jdistill.train import inputs, sharding
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.evaluation import evaluate, final_metrics, stage_evaluation
from jdistill.train.resume import resume_point
from jdistill.train.stage import build_stage, build_student, stage_facts
from jdistill.train.writers import MetricsWriter, truncate_jsonl, write_json_atomic

PURPOSE_EXTRA_METRICS = 11


@dataclasses.dataclass
class StageResult:
    """A trained stage: its model (graphdef + params), final evaluation and cost."""

    name: str
    graphdef: Any
    params: Any
    metrics: dict
    params_count: int
    wall_seconds: float


def _mean_metrics(window: list[dict]) -> dict:
    host = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def steps_per_epoch(data_config, train_config, kind: str) -> float:
    """Optimizer steps per pass over the training split (examples, or LM windows)."""
    examples = inputs.train_examples(data_config, kind)
    return max(examples / train_config.batch_size, 1e-9)


def training_data(data_config, stage_config, seed: int, dataset_fn=None, layout: str = "packed"):
    """The stage's random-access training batches (`dataset_fn` may add fields, e.g. a teacher cache) in the
    recipe's `batch_layout`."""
    dataset = inputs.train_dataset(data_config, stage_config.model, stage_config.train, seed, layout)
    return dataset if dataset_fn is None else dataset_fn(dataset)


def train_loop(
    stage,
    state,
    dataset,
    *,
    start: int,
    stop: int,
    train_config,
    score,
    writer,
    checkpointer,
    bar,
):
    """Steps `start + 1 .. stop` with logging, evaluation (`score(params) -> metrics`) and checkpoints;
    (state, last evaluation or None)."""
    window, window_start = [], time.perf_counter()
    metrics = None
    batch_shardings = stage.shardings.batch
    for step, batch in zip(range(start + 1, stop + 1), inputs.batches_from(dataset, start, stop), strict=False):
        state, step_metrics = stage.train_step(
            state, stage.teacher_params, sharding.global_batch(batch, batch_shardings)
        )
        window.append(step_metrics)
        bar.update(1)
        if step % train_config.log_every == 0 or step == stop:
            train_metrics = _mean_metrics(window)
            train_metrics["steps_per_second"] = len(window) / (time.perf_counter() - window_start)
            writer.write(step, "train", train_metrics)
            bar.set_postfix(
                loss=f"{train_metrics['loss']:.4f}",
                acc=f"{train_metrics.get('accuracy', 0.0):.3f}",
                steps_s=f"{train_metrics['steps_per_second']:.1f}",
            )
            window, window_start = [], time.perf_counter()
        if step % train_config.eval_every == 0 or step == train_config.steps:
            metrics = score(state.params)
            writer.write(step, "eval", metrics)
        if step % train_config.checkpoint_every == 0 or step == train_config.steps:
            checkpointer.save(step, state, force=True)
    return state, metrics


def run_stage(
    name: str,
    stage_config,
    *,
    recipe,
    data_config,
    seed: int,
    init_key,
    stage_dir: Path,
    run_dir: Path,
    teacher: StageResult | None = None,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    interrupt_at_step: int | None = None,
    mesh_config=None,
    dataset_fn=None,
    run_config=None,
) -> StageResult:
    """Train (or resume, or reload a finished) stage and return its result.

    The step runs on the mesh of `mesh_config` (default: data parallel over every device) with explicit
    shardings. `dataset_fn(dataset) -> dataset` may add fields to the training batches (e.g. a teacher cache).
    `interrupt_at_step` stops after that step's checkpoint as if the process were killed (for resume tests).
    A finished LM stage writes `stage_dir/samples.jsonl` when `run_config` asks for samples (`run.sample_tokens`).
    """
    started = time.perf_counter()
    train_config = stage_config.train
    dataset = training_data(data_config, stage_config, seed, dataset_fn, recipe.batch_layout)
    stage = build_stage(
        stage_config,
        recipe=recipe,
        facts=stage_facts(stage_config, data_config),
        batch=dataset[0],
        seed=seed,
        init_key=init_key,
        mesh_config=mesh_config,
        teacher_graphdef=teacher.graphdef if teacher is not None else None,
        teacher_params=teacher.params if teacher is not None else None,
    )
    checkpointer = Checkpointer(stage_dir / "checkpoints", keep=train_config.keep_checkpoints)
    start, state, done = resume_point(checkpointer, stage.state, stage_dir, train_config.steps, resume=resume)
    if done is not None:
        checkpointer.close()
        return StageResult(
            name, stage.graphdef, state.params, done["metrics"], stage.params_count, done["wall_seconds"]
        )
    if jax.process_index() == 0:
        truncate_jsonl(run_dir / "metrics.jsonl", name, start)
    writer = MetricsWriter(run_dir, name, tensorboard=tensorboard, first_step=start + 1)
    score, sampler, eval_batches = stage_evaluation(
        data_config, stage_config.model, run_config, stage.graphdef, stage.recipe.forward_params
    )
    stop = train_config.steps if interrupt_at_step is None else min(interrupt_at_step, train_config.steps)
    bar = StepBar(
        total=train_config.steps,
        initial=start,
        desc=name,
        dynamic_ncols=True,
        leave=True,
        disable=not progress or jax.process_index() != 0,
    )
    state, metrics = train_loop(
        stage,
        state,
        dataset,
        start=start,
        stop=stop,
        train_config=train_config,
        score=score,
        writer=writer,
        checkpointer=checkpointer,
        bar=bar,
    )
    bar.close()
    writer.close()
    checkpointer.close()
    if metrics is None or stop < train_config.steps:
        metrics = score(state.params)
    metrics = final_metrics(
        metrics,
        stage.recipe,
        stage.graphdef,
        state.params,
        eval_batches,
        jax.random.fold_in(init_key, PURPOSE_EXTRA_METRICS),
    )
    if sampler is not None and stop == train_config.steps:
        sampler(stage_dir, name, nnx.merge(stage.graphdef, stage.recipe.forward_params(state.params)))
    wall = time.perf_counter() - started
    if stop == train_config.steps and jax.process_index() == 0:
        write_json_atomic(
            stage_dir / "result.json", {"metrics": metrics, "wall_seconds": wall, "params": stage.params_count}
        )
    return StageResult(name, stage.graphdef, state.params, metrics, stage.params_count, wall)


def stage_key(seed: int, purpose: int):
    """Parameter-init key for a stage: the config seed folded with a fixed purpose id."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


__all__ = ["StageResult", "build_student", "evaluate", "run_stage", "stage_key", "steps_per_epoch"]

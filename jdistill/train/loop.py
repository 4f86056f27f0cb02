"""Train one stage: model init, the jitted step over a grain pipeline, evaluation, checkpoints, resume.

A stage is resumable: its state is restored from the newest checkpoint in `stage_dir/checkpoints`, the data
pipeline is indexed by step and the step keys are derived from (seed, step), so the resumed run reproduces the
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jdistill.configs.schema import MeshConfig
from jdistill.eval.metrics import add_stats, summarize
from jdistill.models import Transformer, count_params
from jdistill.recipes.base import RunFacts
from jdistill.train import inputs, sharding
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.optim import make_optimizer
from jdistill.train.state import TrainState
from jdistill.train.step import StepShardings, make_eval_step, make_train_step
from jdistill.train.writers import MetricsWriter, truncate_jsonl, write_json_atomic


@dataclasses.dataclass
class StageResult:
    """A trained stage: its model (graphdef + params), final evaluation and cost."""

    name: str
    graphdef: Any
    params: Any
    metrics: dict
    params_count: int
    wall_seconds: float


def evaluate(eval_step, params, batches, *, kind: str) -> dict:
    total = None
    for batch in batches:
        total = add_stats(total, jax.device_get(eval_step(params, batch)))
    return summarize(total, bits_per_byte=kind == "lm")


def _mean_metrics(window: list[dict]) -> dict:
    host = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def build_student(stage_config, recipe, init_key):
    """The module a stage trains: the config's transformer, or the recipe's wrapper around it (peer students)."""
    rngs = nnx.Rngs(params=init_key)
    factory = recipe.wraps_student()
    return factory(stage_config.model, rngs) if factory is not None else Transformer(stage_config.model, rngs=rngs)


def steps_per_epoch(data_config, train_config, kind: str) -> float:
    """Optimizer steps per pass over the training split (examples, or LM windows)."""
    examples = inputs.train_examples(data_config, kind)
    return max(examples / train_config.batch_size, 1e-9)


def run_stage(name: str, stage_config, *, recipe, data_config, seed: int, init_key, stage_dir: Path,
              run_dir: Path, teacher: StageResult | None = None, resume: bool = False, progress: bool = True,
              tensorboard: bool = True, interrupt_at_step: int | None = None, mesh_config=None,
              dataset_fn=None) -> StageResult:
    """Train (or resume, or reload a finished) stage and return its result.

    The step runs on the mesh of `mesh_config` (default: data parallel over every device) with explicit
    shardings. `dataset_fn(dataset) -> dataset` may add fields to the training batches (e.g. a teacher cache).
    `interrupt_at_step` stops after that step's checkpoint as if the process were killed (for resume tests).
    """
    started = time.perf_counter()
    model_config, train_config = stage_config.model, stage_config.train
    per_epoch = steps_per_epoch(data_config, train_config, model_config.kind)
    recipe = recipe.bind(RunFacts(total_steps=train_config.steps, steps_per_epoch=per_epoch,
                                  num_examples=inputs.train_examples(data_config, model_config.kind),
                                  batch_size=train_config.batch_size, weight_decay=train_config.weight_decay))
    model = build_student(stage_config, recipe, init_key)
    optimizer = make_optimizer(train_config)
    params_count = count_params(model)
    graphdef, params = nnx.split(model)
    del model
    teacher_params = teacher.params if teacher is not None else None
    params, recipe_state = recipe.init(params, teacher_params, jax.random.fold_in(init_key, 7))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       recipe_state=recipe_state)
    mesh = sharding.make_mesh(mesh_config or MeshConfig())
    rules = sharding.resolve_rules((mesh_config or MeshConfig()).rules)
    state_shardings = sharding.state_shardings(state, mesh, rules)
    state = sharding.shard(state, state_shardings)
    teacher_shardings = None
    if teacher_params is not None:
        teacher_shardings = sharding.param_shardings(teacher_params, mesh, rules)
        teacher_params = sharding.shard(teacher_params, teacher_shardings)
    checkpointer = Checkpointer(stage_dir / "checkpoints", keep=train_config.keep_checkpoints)
    result_path = stage_dir / "result.json"
    start = 0
    if resume and checkpointer.latest_step() is not None:
        start = checkpointer.latest_step()
        state = checkpointer.restore(start, state)
        if result_path.exists() and start == train_config.steps:
            done = json.loads(result_path.read_text())
            checkpointer.close()
            return StageResult(name, graphdef, state.params, done["metrics"], params_count, done["wall_seconds"])
    if jax.process_index() == 0:
        truncate_jsonl(run_dir / "metrics.jsonl", name, start)
    writer = MetricsWriter(run_dir, name, tensorboard=tensorboard)
    dataset = inputs.train_dataset(data_config, model_config, train_config, seed)
    if dataset_fn is not None:
        dataset = dataset_fn(dataset)
    batch_shardings = sharding.batch_shardings(dataset[0], mesh, rules)
    shardings = StepShardings(state_shardings, teacher_shardings, batch_shardings, sharding.replicated(mesh), rules)
    train_step = make_train_step(graphdef, recipe, optimizer, seed=seed,
                                 teacher_graphdef=teacher.graphdef if teacher is not None else None,
                                 grad_accum_steps=train_config.grad_accum_steps, shardings=shardings,
                                 steps_per_epoch=per_epoch)
    eval_step = make_eval_step(graphdef, recipe.forward_params)
    eval_batches = inputs.eval_batches(data_config, model_config.kind)
    stop = train_config.steps if interrupt_at_step is None else min(interrupt_at_step, train_config.steps)
    bar = tqdm(total=train_config.steps, initial=start, desc=name, dynamic_ncols=True, leave=True,
               disable=not progress or jax.process_index() != 0)
    window, window_start = [], time.perf_counter()
    metrics = None
    for step, batch in zip(range(start + 1, stop + 1), inputs.batches_from(dataset, start, stop)):
        state, step_metrics = train_step(state, teacher_params, sharding.global_batch(batch, batch_shardings))
        window.append(step_metrics)
        bar.update(1)
        if step % train_config.log_every == 0 or step == stop:
            train_metrics = _mean_metrics(window)
            train_metrics["steps_per_second"] = len(window) / (time.perf_counter() - window_start)
            writer.write(step, "train", train_metrics)
            bar.set_postfix(loss=f"{train_metrics['loss']:.4f}", acc=f"{train_metrics.get('accuracy', 0.0):.3f}",
                            steps_s=f"{train_metrics['steps_per_second']:.1f}")
            window, window_start = [], time.perf_counter()
        if step % train_config.eval_every == 0 or step == train_config.steps:
            metrics = evaluate(eval_step, state.params, eval_batches, kind=model_config.kind)
            writer.write(step, "eval", metrics)
        if step % train_config.checkpoint_every == 0 or step == train_config.steps:
            checkpointer.save(step, state, force=True)
    bar.close()
    writer.close()
    checkpointer.close()
    if metrics is None or stop < train_config.steps:
        metrics = evaluate(eval_step, state.params, eval_batches, kind=model_config.kind)
    metrics = dict(metrics, **recipe.extra_metrics(nnx.merge(graphdef, state.params), eval_batches,
                                                   jax.random.fold_in(init_key, 11)))
    wall = time.perf_counter() - started
    if stop == train_config.steps and jax.process_index() == 0:
        write_json_atomic(result_path, {"metrics": metrics, "wall_seconds": wall, "params": params_count})
    return StageResult(name, graphdef, state.params, metrics, params_count, wall)


def stage_key(seed: int, purpose: int):
    """Parameter-init key for a stage: the config seed folded with a fixed purpose id."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


__all__ = ["StageResult", "evaluate", "run_stage", "stage_key"]

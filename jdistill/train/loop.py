"""Train one stage: build it (`jdistill.train.stage`), resume it, run the jitted step over the grain pipeline
with periodic evaluation and checkpoints, evaluate it.

A stage is resumable: its state is restored from the newest checkpoint in `stage_dir/checkpoints` that
restores (`jdistill.train.resume`), the data pipeline is indexed by step and the step keys are derived from
(seed, step), so the resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jdistill.progress import StepBar
from jdistill.train import inputs, sharding
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.evaluation import evaluate, final_metrics, stage_evaluation
from jdistill.train.nonfinite import NonFiniteGuard, finite_window_means
from jdistill.train.preemption import StopRequests, preempted
from jdistill.train.resume import resume_point
from jdistill.train.stage import build_stage, build_student, stage_facts
from jdistill.train.wall import WallClock
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


def steps_per_epoch(data_config, train_config, kind: str) -> float:
    """Optimizer steps per pass over the training split (examples, or LM windows)."""
    examples = inputs.train_examples(data_config, kind)
    return max(examples / train_config.batch_size, 1e-9)


def training_data(data_config, stage_config, seed: int, dataset_fn=None, layout: str = "packed"):
    """The stage's random-access training batches (`dataset_fn` may add fields, e.g. a teacher cache) in the
    recipe's `batch_layout`."""
    dataset = inputs.train_dataset(data_config, stage_config.model, stage_config.train, seed, layout)
    return dataset if dataset_fn is None else dataset_fn(dataset)


@dataclasses.dataclass
class LoopContext:
    """What the loop needs besides the step: where it logs, saves and accounts, and how it stops."""

    name: str
    run_dir: Path
    writer: Any
    checkpointer: Checkpointer
    bar: Any
    guard: NonFiniteGuard
    stop_requests: StopRequests
    clocks: tuple = ()  # WallClocks saved at every log line and checkpoint

    def save(self, step: int, state) -> None:
        self.guard.flush()  # a checkpoint never follows an unchecked step
        self.checkpointer.save(step, state, force=True, info={"skipped_steps": self.guard.skipped})
        self.save_clocks()

    def save_clocks(self) -> None:
        for clock in self.clocks:
            clock.save()


def train_loop(stage, state, dataset, *, start: int, stop: int, train_config, score, context: LoopContext):
    """Steps `start + 1 .. stop` with logging, evaluation (`score(params) -> metrics` of the weights
    `recipe.evaluated_params(params, recipe_state)`) and checkpoints;
    (state, last evaluation or None). Raises `NonFiniteError` (`jdistill.train.nonfinite`) and, after saving the
    current step, `Preempted` (`jdistill.train.preemption`)."""
    window, window_start = [], time.perf_counter()
    metrics = None
    batch_shardings = stage.shardings.batch
    step = start
    for step, batch in zip(range(start + 1, stop + 1), inputs.batches_from(dataset, start, stop), strict=False):
        state, step_metrics = stage.train_step(
            state, stage.teacher_params, sharding.global_batch(batch, batch_shardings)
        )
        context.guard.push(step, step_metrics)
        window.append(step_metrics)
        context.bar.update(1)
        if step % train_config.log_every == 0 or step == stop:
            context.guard.flush()
            train_metrics = finite_window_means(window)
            train_metrics["steps_per_second"] = len(window) / (time.perf_counter() - window_start)
            if context.guard.allowed:
                train_metrics["skipped_steps"] = context.guard.skipped
            context.writer.write(step, "train", train_metrics)
            context.bar.set_postfix(
                loss=f"{train_metrics.get('loss', float('nan')):.4f}",
                acc=f"{train_metrics.get('accuracy', 0.0):.3f}",
                steps_s=f"{train_metrics['steps_per_second']:.1f}",
            )
            context.save_clocks()
            window, window_start = [], time.perf_counter()
        if step % train_config.eval_every == 0 or step == train_config.steps:
            metrics = score(stage.recipe.evaluated_params(state.params, state.recipe_state))
            context.writer.write(step, "eval", metrics)
        if step % train_config.checkpoint_every == 0 or step == train_config.steps:
            context.save(step, state)
        signum = context.stop_requests.agreed(step, last=step == stop)
        if signum is not None:
            if context.checkpointer.latest_step() != step:
                context.save(step, state)
            raise preempted(signum, context.name, step, context.checkpointer.step_path(step), context.run_dir)
    context.guard.flush()
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
    clocks: tuple = (),
) -> StageResult:
    """Train (or resume, or reload a finished) stage and return its result.

    The step runs on the mesh of `mesh_config` (default: data parallel over every device) with explicit
    shardings. `dataset_fn(dataset) -> dataset` may add fields to the training batches (e.g. a teacher cache).
    `interrupt_at_step` stops after that step's checkpoint as if the process were killed (for resume tests).
    A finished LM stage writes `stage_dir/samples.jsonl` when `run_config` asks for samples (`run.sample_tokens`).
    Its `wall_seconds` count every process that worked on it (`stage_dir/wall.json`); `clocks` (e.g. the job's
    `WallClock`) are saved along with the stage's. Non-finite steps halt the stage (`jdistill.train.nonfinite`);
    SIGTERM / SIGINT save the current step and stop it (`jdistill.train.preemption`).
    """
    clock = WallClock(stage_dir / "wall.json", resume=resume)
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
    start, state, done, info = resume_point(
        checkpointer, stage.state, stage_dir, train_config.steps, resume=resume, stage=name
    )
    if done is not None:
        checkpointer.close()
        return StageResult(
            name, stage.graphdef, state.params, done["metrics"], stage.params_count, done["wall_seconds"]
        )
    if jax.process_index() == 0:
        truncate_jsonl(run_dir / "metrics.jsonl", name, start)
    writer = MetricsWriter(run_dir, name, tensorboard=tensorboard, first_step=start + 1)
    recipe = stage.recipe
    score, sampler, eval_batches = stage_evaluation(
        data_config, stage_config.model, run_config, stage.graphdef, recipe.forward_params, recipe.eval_stats()
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

    def last_good():
        step = checkpointer.latest_step()
        return None if step is None else (step, checkpointer.step_path(step))

    skipped = int(info.get("skipped_steps", 0)) if isinstance(info.get("skipped_steps", 0), int) else 0
    with StopRequests() as stop_requests:
        context = LoopContext(
            name,
            run_dir,
            writer,
            checkpointer,
            bar,
            NonFiniteGuard(name, train_config.skip_nonfinite_steps, last_good, skipped=skipped),
            stop_requests,
            (clock, *clocks),
        )
        try:
            state, metrics = train_loop(
                stage, state, dataset, start=start, stop=stop, train_config=train_config, score=score, context=context
            )
        finally:
            bar.close()
            writer.close()
            context.save_clocks()
            checkpointer.close()
        if metrics is None or stop < train_config.steps:
            metrics = score(stage.recipe.evaluated_params(state.params, state.recipe_state))
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
        wall = clock.total()
        if stop == train_config.steps and jax.process_index() == 0:
            write_json_atomic(
                stage_dir / "result.json", {"metrics": metrics, "wall_seconds": wall, "params": stage.params_count}
            )
        context.save_clocks()
        signum = stop_requests.agreed(stop, last=True)  # a signal during the stage's final evaluation
        if signum is not None:
            raise preempted(signum, name, stop, checkpointer.step_path(stop), run_dir)
    return StageResult(name, stage.graphdef, state.params, metrics, stage.params_count, wall)


def stage_key(seed: int, purpose: int):
    """Parameter-init key for a stage: the config seed folded with a fixed purpose id."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


__all__ = ["StageResult", "build_student", "evaluate", "run_stage", "stage_key", "steps_per_epoch"]

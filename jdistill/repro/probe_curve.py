"""Probe curves: linear-probe and k-NN accuracy of a label-free student stage at each of its kept checkpoints.

A label-free recipe (DINO, random teachers) is judged by probes on its features (`jdistill.eval.probes`), which a
job computes once, at the end of the stage (`recipe.extra_metrics`). To see them over training, train with
`student.train.checkpoint_every=K` and `student.train.keep_checkpoints` large enough to keep every one, then read
the curve back: each checkpoint's parameters are probed by the recipe's own `extra_metrics` with the stage's own
probe key and halves (`fold_in(stage_key(seed, STUDENT_INIT), PURPOSE_EXTRA_METRICS)`), so the point at the last
step is the stage's final metric in `summary.json`, exactly.
"""

from __future__ import annotations

import jax
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import RunDirError
from jdistill.io import fs
from jdistill.models import Transformer
from jdistill.recipes.registry import build_recipe
from jdistill.train import inputs
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.job import STUDENT_INIT
from jdistill.train.loop import PURPOSE_EXTRA_METRICS, stage_key
from jdistill.train.rundir import local_config


def stage_recipe(config, stage: str):
    """The recipe that trained student stage `stage`: a `run.compare` entry's, else the job's own."""
    name = stage.removeprefix("student_")
    distill = config.run.compare_distill(name, config.distill) if name in config.run.compare else config.distill
    return build_recipe(distill)


def probe_curve(run_dir, stage: str) -> list[tuple[int, dict]]:
    """[(step, {metric: value})] for every checkpoint of `run_dir/stage`, oldest first (the recipe's
    `extra_metrics`: for DINO and random teachers `linear_probe_accuracy` and `knn_accuracy`)."""
    run_dir = fs.path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no config.yaml)")
    if not stage.startswith("student_"):
        raise RunDirError(f"{stage}: expected a student stage of {run_dir} (student_dino, student_random_teacher, ...)")
    config = load_config(str(local_config(run_dir)))
    recipe = stage_recipe(config, stage)
    factory = recipe.wraps_student()
    model_config = config.student.model
    model = factory(model_config, nnx.Rngs(0)) if factory else Transformer(model_config, rngs=nnx.Rngs(0))
    graphdef, like = nnx.split(model)
    checkpointer = Checkpointer(run_dir / stage / "checkpoints", keep=1)  # keep only bounds saves; this reads
    try:
        steps = sorted(checkpointer.all_steps())
        if not steps:
            raise RunDirError(f"{run_dir / stage}: no checkpoint to probe")
        params = [(step, checkpointer.restore_params(step, like)) for step in steps]
    finally:
        checkpointer.close()
    key = jax.random.fold_in(stage_key(config.seed, STUDENT_INIT), PURPOSE_EXTRA_METRICS)
    batches = inputs.eval_batches(config.data, model_config.kind)
    return [(step, recipe.extra_metrics(nnx.merge(graphdef, p), batches, key)) for step, p in params]

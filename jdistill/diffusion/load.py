"""Load a trained diffusion teacher for sampling: `load_denoiser(run_dir)` (docs/diffusion.md).

    teacher = load_denoiser("runs/diffusion_edm")         # the EMA weights of the newest checkpoint
    run, params = make_sampler(teacher.model, teacher.schedule, sampler="heun", nfe=35, guidance_scale=2.0)

This module reads run directories, so unlike the rest of `jdistill.diffusion` it sits above the recipes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from jdistill.diffusion.schedules import Schedule
from jdistill.errors import RunDirError
from jdistill.io import fs


class TrainedDenoiser(NamedTuple):
    """A denoiser module with its trained weights, its schedule, the run's config and the checkpoint's step."""

    model: Any
    schedule: Schedule
    config: Any
    step: int


def load_denoiser(run_dir, stage: str | None = None, *, ema: bool = True) -> TrainedDenoiser:
    """The denoiser of a `diffusion_*` run: the newest checkpoint of `stage` (default `student_<recipe>`) that
    restores, with its EMA weights (`ema=False`: the online weights). One-line `RunDirError`s for a folder that is
    not a run, a run whose recipe is not a diffusion teacher, or a stage without a checkpoint."""
    from jdistill.configs import load_config
    from jdistill.recipes.diffusion_teacher import DiffusionTeacher
    from jdistill.recipes.registry import build_recipe
    from jdistill.train.checkpoint import Checkpointer
    from jdistill.train.resume import restore_newest
    from jdistill.train.rundir import local_config

    run_dir = fs.path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_config(str(local_config(run_dir)))
    recipe = build_recipe(config.distill)
    if not isinstance(recipe, DiffusionTeacher):
        raise RunDirError(
            f"{run_dir}: recipe {recipe.name!r} did not train a diffusion teacher "
            "(expected diffusion_edm, diffusion_flow or diffusion_vp)"
        )
    stage = stage or f"student_{recipe.name}"
    model = recipe.wraps_student()(config.student.model, nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    stage_dir = run_dir / stage
    if not (stage_dir / "checkpoints").is_dir():
        raise RunDirError(f"{stage_dir}: no checkpoints (is {stage!r} a stage of this run?)")
    checkpointer = Checkpointer(stage_dir / "checkpoints", keep=1)

    def read_ema(step, like):
        return checkpointer.restore_field(step, "recipe_state", {"ema": like})["ema"]

    try:
        step, params = restore_newest(
            checkpointer,
            params,
            stage_dir,
            stage=stage,
            move=False,
            read=read_ema if ema else checkpointer.restore_params,
        )
    finally:
        checkpointer.close()
    if step is None:
        raise RunDirError(f"{stage_dir}: no checkpoint to load")
    if ema and not all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params)):
        # a run trained without an EMA (ema_decay: 0) saves none: orbax leaves the requested structure unfilled
        raise RunDirError(
            f"{stage_dir}: step {step} has no EMA weights (was the teacher trained with ema_decay: 0?); "
            "a distillation starts from the teacher's EMA: train it with an EMA"
        )
    return TrainedDenoiser(nnx.merge(graphdef, params), recipe.schedule, config, int(step))

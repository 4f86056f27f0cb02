"""Load trained models back: a stage of a run directory, or a pretrained teacher (`init_from`)."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import RunDirError
from jdistill.io import fs
from jdistill.models import Transformer, count_params
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.resume import restore_newest
from jdistill.train.rundir import local_config


def stage_config_for(config, stage: str):
    """The teacher's config for "teacher", the student's for every student stage."""
    if stage == "teacher":
        return config.teacher
    if stage.startswith("student"):
        return config.student
    raise RunDirError(f"--stage {stage}: expected teacher or a student stage (student_scratch, student_kd, ...)")


def load_stage_params(stage_dir: Path, model_config, recipe=None):
    """(graphdef, params) of the newest checkpoint in `stage_dir/checkpoints` that restores, for a model of
    `model_config` (built by `recipe` when it wraps the student, e.g. peer students)."""
    factory = recipe.wraps_student() if recipe is not None else None
    model = factory(model_config, nnx.Rngs(0)) if factory else Transformer(model_config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    checkpointer = Checkpointer(fs.path(stage_dir) / "checkpoints", keep=1)
    try:  # a damaged newest checkpoint is skipped with a warning (left in place: loading only reads)
        step, params = restore_newest(
            checkpointer,
            params,
            fs.path(stage_dir),
            stage=fs.path(stage_dir).name,
            move=False,
            read=checkpointer.restore_params,
        )
    finally:
        checkpointer.close()
    if step is None:
        raise RunDirError(f"{stage_dir}: no checkpoint to load")
    return graphdef, params


def load_stage(run_dir, stage: str):
    """(model with the stage's newest checkpoint, run Config)."""
    run_dir = fs.path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_config(str(local_config(run_dir)))
    recipe = None
    if stage.startswith("student_") and stage != "student_scratch":
        from jdistill.recipes.registry import build_recipe

        recipe = build_recipe(config.distill)
    graphdef, params = load_stage_params(run_dir / stage, stage_config_for(config, stage).model, recipe)
    return nnx.merge(graphdef, params), config


def load_pretrained(stage_config, role: str = "teacher", mesh_config=None):
    """A `StageResult` for `init_from`: "hf:DIR" (a Hugging Face checkpoint folder) or RUN_DIR/STAGE, built with the
    checkpoint's architecture and the config's runtime fields (`jdistill.hf.init_from`). `mesh_config`: an "hf:DIR"
    checkpoint is read straight into the job's sharded layout (each process reads what its devices hold)."""
    from jdistill.hf.init_from import load_init_model
    from jdistill.train import sharding
    from jdistill.train.loop import StageResult

    layout = None if mesh_config is None else (sharding.make_mesh(mesh_config), mesh_config.rules)
    model = load_init_model(stage_config, role, layout)
    graphdef, params = nnx.split(model)
    return StageResult(role, graphdef, params, {}, count_params(model), 0.0)

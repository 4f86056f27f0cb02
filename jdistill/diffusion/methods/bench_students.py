"""The trajectory-family students of `jdistill bench diffusion` (docs/diffusion_methods.md): each builder trains the
method's student from the benchmark's teacher with its preset (or loads the run already there) and returns the
benchmark's `Generator` of it, sampled with the recipe's own `student_sampler`.

Like `jdistill.diffusion.load`, this module reads and writes run directories, so it sits above the recipes (every
import is inside a function: the benchmark's registry names the builders without importing anything).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax

# name -> (preset, recipe options[, other config overrides]); the benchmark's registry
# (`jdistill.bench.diffusion_students`) names the builders.
METHODS: dict[str, tuple] = {
    "progressive": ("diffusion_progressive", {}),
    # Consistency Models' raw-output form for the EDM teacher (`output: auto`: raw for EDM, x0 for the 2-D flow):
    # 4-step FD 1.66 against 1.98 with x0 (seed 0)
    "consistency": ("diffusion_cd", {"variant": "cd", "output": "auto"}),
    "consistency_training": ("diffusion_cd", {"variant": "ct"}),
    "tcd": ("diffusion_cd", {"variant": "tcd"}),
    "tdd": ("diffusion_cd", {"variant": "tdd"}),
    "hyper_sd": ("diffusion_cd", {"variant": "hyper_sd"}),
    # Hyper-SD's k-step model is trained down to k segments (the paper releases one checkpoint per step count)
    "hyper_sd_4step": ("diffusion_cd", {"variant": "hyper_sd", "hyper_sd_stages": "[8,4]", "output": "auto"}),
    # + the human-feedback stage (reward classifier of seed 1) on the last quarter of the steps
    "hyper_sd_feedback": ("diffusion_cd", {"variant": "hyper_sd", "reward_weight": 0.2}),
    "image_free_cm": ("diffusion_cd", {"variant": "image_free"}),
    "reflow": ("diffusion_reflow", {"variant": "reflow"}),
    "traflow": ("diffusion_reflow", {"variant": "traflow"}),
    "shortcut": ("diffusion_reflow", {"variant": "shortcut"}),
    "sfd": ("diffusion_sfd", {"variant": "sfd"}),
    "sfd_v": ("diffusion_sfd", {"variant": "sfd", "step_counts": "[2,3,4,5]"}),
    "dode": ("diffusion_sfd", {"variant": "dode"}, ("student.train.learning_rate=0.01", "student.train.steps=200")),
    "guidance": ("diffusion_guidance", {"variant": "student"}),
}


def _train_or_load(context, name: str, data: str, seed: int):
    """The trained student of method `name` for `data` ("digits" or "toy2d") and `seed`, trained into
    `context.student_dir(...)` unless a finished run (one with `summary.json`) is there; an interrupted run (its
    checkpoints restore, but the stage did not reach its last step) is resumed, never measured as it is."""
    from jdistill.configs import load_config
    from jdistill.diffusion.load import load_denoiser
    from jdistill.train import run_teacher_student

    run_dir = Path(context.student_dir(name, data, seed))
    if (run_dir / "summary.json").is_file():  # written when the run finished; an interrupted run is resumed below
        return load_denoiser(run_dir)
    preset, options, *extra = METHODS[name]
    teacher = context.teacher(data)
    overrides = [f"seed={seed}", f"distill.options.teacher_run={context.teacher_dirs[data]}"]
    overrides += [f"distill.options.{key}={value}" for key, value in options.items()] + list(extra[0] if extra else ())
    if data == "toy2d":
        overrides += [f"distill.options.data={context.toy}", "distill.options.class_conditional=false"]
    config = load_config(preset, overrides)
    if data == "toy2d":  # the student copies the toy teacher's MLP
        student = dataclasses.replace(config.student, model=teacher.config.student.model)
        config = dataclasses.replace(config, student=student)
    run_teacher_student(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return load_denoiser(run_dir)


def recipe_generator(recipe, model):
    """The benchmark's `Generator` of a distilled student: `draw(nfe)` runs `recipe.student_sampler(model, nfe)` from
    x_T ~ the student schedule's prior; `forward` is one evaluation of the student network."""
    from flax import nnx

    from jdistill.bench.diffusion import Generator
    from jdistill.diffusion.samplers import draw_from_prior
    from jdistill.diffusion.schedules import predict

    schedule = recipe.schedule
    conditional = bool(getattr(model, "num_classes", 0))
    shape = tuple(model.sample_shape)
    graphdef, params = nnx.split(model)

    @functools.cache
    def draw(nfe: int):
        run, _ = recipe.student_sampler(model, nfe)
        return draw_from_prior(run, schedule, params, shape, conditional=conditional)

    @jax.jit
    def forward(params, key, labels):
        x = schedule.prior(key, (labels.shape[0], *shape))
        return predict(schedule, nnx.merge(graphdef, params), x, schedule.t_max, labels if conditional else None).x0

    return Generator(draw, lambda nfe: lambda key, labels: forward(params, key, labels), conditional)


def build(name: str):
    """The benchmark builder `(context, data, seed) -> Generator` of method `name`."""

    def builder(context, data: str, seed: int):
        from jdistill.recipes.registry import build_recipe

        student = _train_or_load(context, name, data, seed)
        return recipe_generator(build_recipe(student.config.distill), student.model)

    return builder


progressive = build("progressive")
consistency = build("consistency")
consistency_training = build("consistency_training")
tcd = build("tcd")
tdd = build("tdd")
hyper_sd = build("hyper_sd")
hyper_sd_4step = build("hyper_sd_4step")
hyper_sd_feedback = build("hyper_sd_feedback")
image_free_cm = build("image_free_cm")
reflow = build("reflow")
traflow = build("traflow")
shortcut = build("shortcut")
sfd = build("sfd")
sfd_v = build("sfd_v")
dode = build("dode")
guidance = build("guidance")

"""What the diffusion distillation recipes share: a trained diffusion teacher run, a student denoiser started from
it, and the sampler that draws the student's images (docs/diffusion_methods.md).

The teacher is a run of `diffusion_edm`, `diffusion_flow` or `diffusion_vp` (`teacher_run`, its EMA weights read by
`jdistill.diffusion.load.load_denoiser`). Its weights ride in the recipe state (`state["teacher"]`, loaded once at
`init`): the step closes over nothing, a resumed run needs only its own directory, and the weights are never given to
the optimizer (they are returned unchanged each step, under `stop_gradient` in the loss). The student is a denoiser
of `student.model` (the teacher's schedule and conditioning; `guidance_conditioning` adds the guidance-scale input)
whose parameters start as a copy of the teacher's wherever the two have the same leaf (`init_from_teacher`); the
parent `DiffusionTeacher` keeps the student's own EMA (`state["ema"]`, what `load_denoiser` returns and what is
sampled), its clean data and its held-out denoising loss.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.load import TrainedDenoiser, load_denoiser
from jdistill.diffusion.methods.guidance import guided_target
from jdistill.diffusion.samplers import make_sampler
from jdistill.diffusion.schedules import Schedule, predict
from jdistill.errors import ConfigError, RunDirError
from jdistill.recipes.diffusion_teacher import IMAGES, DiffusionTeacher
from jdistill.recipes.dino import copy_params


@functools.cache
def trained_teacher(run_dir: str) -> TrainedDenoiser:
    """The teacher run's denoiser with its EMA weights (read once per process)."""
    return load_denoiser(run_dir)


@functools.cache
def _teacher_graphdef(run_dir: str):
    return nnx.split(trained_teacher(run_dir).model)[0]


def merge_params(student_params, teacher_params):
    """The student's parameters with every leaf that the teacher has at the same path and shape taken from the
    teacher (a copy); the rest (e.g. a new guidance embedding) keep their initialisation."""
    teacher_leaves = dict(jax.tree_util.tree_flatten_with_path(teacher_params)[0])

    def pick(path, value):
        source = teacher_leaves.get(path)
        if source is not None and jnp.shape(source) == jnp.shape(value):
            return jnp.array(source, dtype=jnp.asarray(value).dtype)
        return value

    return jax.tree_util.tree_map_with_path(pick, student_params)


@dataclasses.dataclass(frozen=True)
class DiffusionDistillation(DiffusionTeacher):
    """Shared options of the diffusion distillation recipes (subclasses define the objective)."""

    teacher_run: str = ""  # run directory of a trained diffusion_edm / diffusion_flow / diffusion_vp teacher
    init_from_teacher: bool = True
    teacher_guidance_scale: float = 1.0  # CFG scale of the teacher's predictions (1: the conditional model)
    label_dropout: float = 0.1  # the student also learns the null class, so it can be guided at sampling
    sampling_nfe: int = 4  # default NFE of `student_sampler`

    def __post_init__(self):
        if self.teacher_run:
            super().__post_init__()
        if self.sampling_nfe < 1:
            raise ValueError(f"sampling_nfe must be >= 1, got {self.sampling_nfe}")

    # ---- the teacher ----
    def teacher(self) -> TrainedDenoiser:
        if not self.teacher_run:
            raise ConfigError(f"recipe {self.name!r}: set distill.options.teacher_run to a trained diffusion teacher")
        try:
            return trained_teacher(self.teacher_run)
        except RunDirError as error:
            raise ConfigError(f"distill.options.teacher_run: {error}") from None

    @property
    def teacher_schedule(self) -> Schedule:
        return self.teacher().schedule

    @property
    def schedule(self) -> Schedule:
        """The student's schedule: the teacher's unless a method changes the path (reflow's rectified flow)."""
        return self.teacher_schedule

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.teacher().model, "num_classes", 0))

    def check(self, config):
        super().check(config)
        teacher = self.teacher()
        teacher_data = getattr(teacher.config.distill, "options", {}).get("data", IMAGES)
        if teacher_data != self.data:
            raise ConfigError(f"distill.options.data: the teacher was trained on {teacher_data!r}, not {self.data!r}")

    def teacher_module(self, recipe_state):
        """The teacher denoiser with the weights of the recipe state, held fixed."""
        return self.denoiser_module(jax.lax.stop_gradient(recipe_state["teacher"]))

    def denoiser_module(self, params):
        """A denoiser of the teacher's architecture with `params` (the teacher's, or a copy trained alongside)."""
        return nnx.merge(_teacher_graphdef(self.teacher_run), params)

    def teacher_x0(self, teacher, labels, scale=None):
        """`x0_fn(x, t)` of the teacher, classifier-free guided with `scale` (a number or `[batch]`; default
        `teacher_guidance_scale`): x_u + scale (x_c - x_u), one batched pass over both branches."""
        scale = self.teacher_guidance_scale if scale is None else scale
        schedule = self.teacher_schedule
        if labels is None or (isinstance(scale, int | float) and scale == 1.0):
            return lambda x, t: predict(schedule, teacher, x, t, labels).x0
        null = jnp.full_like(labels, teacher.null_label)

        def guided(x, t):
            t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
            doubled = (jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null]))
            conditional, unconditional = jnp.split(predict(schedule, teacher, *doubled).x0, 2)
            return guided_target(conditional, unconditional, jnp.asarray(scale) - 1.0)

        return guided

    # ---- state ----
    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        teacher = nnx.state(self.teacher().model)
        if self.init_from_teacher:
            student_params = merge_params(student_params, teacher)
        return student_params, {"ema": copy_params(student_params), "teacher": copy_params(teacher)}

    # ---- sampling the trained student ----
    def student_sampler(self, model, nfe: int | None = None):
        """(`run(params, x_T, labels, rng) -> samples`, params): the sampler this method's students use; default
        DDIM with the student as the denoiser."""
        return make_sampler(model, self.schedule, sampler="ddim", nfe=nfe or self.sampling_nfe)

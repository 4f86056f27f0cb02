"""Solver distillation of a diffusion teacher (docs/diffusion_methods.md, `variant` chooses):

    sfd   Simple and Fast Distillation (Zhou et al. 2024): the denoiser, started from the teacher, is fine-tuned only
          at the `student_steps` times its DDIM sampler visits; each of its steps must land where `substeps` teacher
          DDIM steps land (`methods.solvers.sfd_loss`, l1 by default, teacher rollout). With `step_counts` (e.g.
          [2, 3, 4, 5]) it is SFD-v: the student is conditioned on its step count k (input 1 / k, through the
          scalar-conditioning embedding, zero-initialised so it starts as the teacher), each training step draws k
          uniformly from the list (`methods.solvers.sfd_v_loss`), and it samples with any k of the list
    dode  D-ODE (Kim et al. 2023): the teacher stays frozen; only one parameter per DDIM step trains, so that the
          `student_steps`-step solver's endpoint matches the `teacher_steps`-step solver's (`methods.solvers`)

No data is needed: every step draws fresh noise (and, for a conditional teacher, labels cycling over the classes) and
solves from it. The student grid is every `substeps`-th point of the teacher schedule's `student_steps * substeps`
grid (D-ODE: `schedule.timesteps(student_steps)`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.diffusion import samplers
from jdistill.diffusion.methods import solvers
from jdistill.diffusion.methods.wrappers import DODEDenoiser, path_name
from jdistill.diffusion.schedules import predict
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation, merge_params
from jdistill.recipes.diffusion_rectified import zero_scalar_conditioning
from jdistill.recipes.dino import copy_params

VARIANTS = ("sfd", "dode")


@dataclasses.dataclass(frozen=True)
class DiffusionSolvers(DiffusionDistillation):
    """Solver distillation: SFD fine-tunes the visited timesteps; D-ODE learns one parameter per solver step."""

    name: str = "diffusion_solvers"
    variant: str = "sfd"
    student_steps: int = 4
    substeps: int = 4  # sfd: teacher DDIM steps per student step
    teacher_steps: int = 32  # dode: the many-step solver the few-step one is distilled from
    metric: str = "l1"  # sfd: l1, l2 or pseudo_huber
    rollout: str = "teacher"  # sfd: the next step starts from the teacher's state or the student's own
    step_counts: tuple[int, ...] = ()  # sfd: SFD-v, one step-conditioned student for these counts (empty: SFD)
    label_dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.student_steps < 1 or self.substeps < 1 or self.teacher_steps <= self.student_steps:
            raise ValueError("student_steps and substeps must be >= 1 and teacher_steps > student_steps")
        if self.rollout not in solvers.ROLLOUTS:
            raise ValueError(f"rollout must be one of {', '.join(solvers.ROLLOUTS)}, got {self.rollout!r}")
        if self.step_counts and (self.variant != "sfd" or min(self.step_counts) < 1):
            raise ValueError(f"step_counts (SFD-v) must be counts >= 1 of variant sfd, got {list(self.step_counts)}")

    def check(self, config):
        super().check(config)
        if self.variant == "dode" and config.student.train.weight_decay:
            raise ConfigError("variant dode: the teacher's weights are frozen; set student.train.weight_decay=0")

    @property
    def teacher_grid(self) -> np.ndarray:
        return self.schedule.timesteps(self.student_steps * self.substeps)

    @property
    def student_grid(self) -> np.ndarray:
        if self.variant == "dode":
            return self.schedule.timesteps(self.student_steps)
        return solvers.sfd_grids(self.teacher_grid, self.substeps)

    @property
    def step_conditioned(self) -> bool:
        return bool(self.step_counts)

    # ---- the student module ----
    def wraps_student(self):
        if self.step_conditioned and not self.guidance_conditioning:
            return dataclasses.replace(self, guidance_conditioning=True).wraps_student()
        build_base, variant, steps = super().wraps_student(), self.variant, self.student_steps

        def build(model_config, rngs):
            base = build_base(model_config, rngs)
            return DODEDenoiser(base, steps) if variant == "dode" else base

        return build

    def init(self, student_params, teacher_params, rng):
        if self.variant == "sfd":
            student_params, state = super().init(student_params, teacher_params, rng)
            if self.step_conditioned:
                student_params = zero_scalar_conditioning(student_params)
            return student_params, state
        teacher = nnx.state(self.teacher().model)
        student_params["base"] = merge_params(student_params["base"], teacher)
        return student_params, {"ema": copy_params(student_params), "teacher": copy_params(teacher)}

    def forward_params(self, params):
        if self.variant == "sfd":
            return params
        frozen = lambda path, value: value if path_name(path) == "lambdas" else jax.lax.stop_gradient(value)
        return jax.tree_util.tree_map_with_path(frozen, params)

    # ---- the objective ----
    def _start(self, model, rng, batch_size: int):
        noise_key, label_key = jax.random.split(rng)
        x_T = self.schedule.prior(noise_key, (batch_size, *model.sample_shape))
        labels = jax.random.randint(label_key, (batch_size,), 0, model.num_classes) if self.conditional else None
        return x_T, labels

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        x_T, labels = self._start(student, rng, batch["inputs"].shape[0])
        teacher_x0 = self.teacher_x0(self.teacher_module(recipe_state), labels)
        student_x0 = lambda x, t: predict(self.schedule, student, x, t, labels).x0
        if self.step_conditioned:
            index = jax.random.randint(jax.random.fold_in(rng, 1), (), 0, len(self.step_counts))
            value = solvers.sfd_v_loss(
                self.conditioned_x0(student, labels),
                teacher_x0,
                x_T,
                self.schedule,
                self.step_counts,
                self.substeps,
                index,
                metric=self.metric,
                rollout=self.rollout,
            )
            return value, {}, ()
        if self.variant == "sfd":
            value, _ = solvers.sfd_loss(
                student_x0,
                teacher_x0,
                x_T,
                self.schedule,
                self.teacher_grid,
                self.substeps,
                metric=self.metric,
                rollout=self.rollout,
            )
            return value, {}, ()
        target = samplers.sample(teacher_x0, x_T, self.schedule, self.teacher_steps, sampler="ddim")
        value = solvers.dode_loss(student.lambdas[...], teacher_x0, x_T, self.schedule, self.student_grid, target)
        return value, {"lambda_abs_mean": jnp.mean(jnp.abs(student.lambdas[...]))}, ()

    def conditioned_x0(self, student, labels):
        """`h -> x0_fn(x, t)`: the SFD-v student told its step condition h (`solvers.step_condition`)."""
        schedule = self.schedule
        return lambda h: lambda x, t: predict(schedule, student, x, t, labels, jnp.full(x.shape[:1], h)).x0

    # ---- sampling ----
    def student_sampler(self, model, nfe: int | None = None):
        """DDIM on the distilled grid (`nfe` = student_steps); D-ODE with its learned parameters; an SFD-v student
        with `nfe` of `step_counts` (default the largest), told that count."""
        if self.step_conditioned:
            return self._step_conditioned_sampler(model, nfe or max(self.step_counts))
        nfe = nfe or self.student_steps
        if nfe != self.student_steps:
            raise ConfigError(f"nfe={nfe}: a {self.variant} student samples with its {self.student_steps} steps")
        grid = self.student_grid
        if self.variant == "sfd":
            return samplers.make_sampler(model, self.schedule, sampler="ddim", nfe=nfe, timesteps=grid)
        graphdef, params = nnx.split(model)
        schedule = self.schedule

        @jax.jit
        def run(params, x_T, labels, rng):
            del rng
            student = nnx.merge(graphdef, params)
            x0_fn = lambda x, t: predict(schedule, student, x, t, labels).x0
            return solvers.dode_sample(x0_fn, x_T, schedule, grid, student.lambdas[...])

        return run, params

    def _step_conditioned_sampler(self, model, nfe: int):
        if nfe not in self.step_counts:
            raise ConfigError(
                f"nfe={nfe}: this SFD-v student samples with one of its step_counts {list(self.step_counts)}"
            )
        grid = solvers.sfd_grids(self.schedule.timesteps(nfe * self.substeps), self.substeps)
        graphdef, params = nnx.split(model)
        h = solvers.step_condition(nfe)

        @jax.jit
        def run(params, x_T, labels, rng):
            del rng
            x0_fn = self.conditioned_x0(nnx.merge(graphdef, params), labels)(h)
            return samplers.sample(x0_fn, x_T, self.schedule, nfe, sampler="ddim", timesteps=grid)

        return run, params

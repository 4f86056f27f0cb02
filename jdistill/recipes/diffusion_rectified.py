"""Rectified-flow distillation of a flow-matching teacher (docs/diffusion_methods.md, `variant` chooses):

    reflow    reflow on the teacher's couplings for `reflow_fraction` of the steps, then one-step distillation
              (Liu et al. 2023)
    slimflow  a smaller student (`student.model`, random init): annealing reflow from independent pairs to the
              couplings, then flow-guided distillation regularised by the teacher's two-step prediction (Zhu et al.)
    traflow   output reconstruction + velocity + self-consistency on points of the teacher's trajectories (Wu et al.)
    shortcut  a step-size-conditioned velocity u(x, t, h), u(., 0) distilled from the teacher's velocity and
              u(., 2h) from two of its own h steps (Frans et al. 2025; the pre-trained-flow variant of Zhang et al.)

The student is a rectified flow whatever the teacher's family: an EDM or VP teacher is read on the flow path through
the time change t = sigma / (alpha + sigma) (`methods.rectified.x0_in_flow_time`), so its ODE, its couplings and its
velocities are the flow's. The couplings are drawn once, at `init`: `num_couplings` noises z, the teacher's DDIM
solve from each along its own `coupling_steps`-step grid (class labels cycling over the classes for a conditional
teacher), every state kept (`state["couplings"]`: noise, trajectory `[coupling_steps + 1, n, ...]` in flow space,
labels). Each step draws a batch of them.
The shortcut student takes the step size through the denoiser's scalar conditioning input (the one a guidance-
distilled student uses for its scale), its embedding zeroed at the start so that h has no effect until trained.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.diffusion.methods import rectified as rf
from jdistill.diffusion.methods.common import teacher_trajectory
from jdistill.diffusion.schedules import Schedule, predict
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation

VARIANTS = ("reflow", "slimflow", "traflow", "shortcut")


@dataclasses.dataclass(frozen=True)
class DiffusionRectified(DiffusionDistillation):
    """Rectified-flow distillation: reflow + one-step distillation, SlimFlow, TraFlow, shortcut self-distillation."""

    name: str = "diffusion_rectified"
    variant: str = "reflow"
    num_couplings: int = 4096
    coupling_steps: int = 16
    reflow_fraction: float = 0.6  # reflow / slimflow: the share of the steps spent refitting the flow
    anneal_fraction: float = 0.3  # slimflow: the share of the steps over which beta goes from 1 to 0
    guide_weight: float = 1.0  # slimflow: weight of the two-step flow guidance
    reconstruction_weight: float = 1.0  # traflow
    velocity_weight: float = 1.0
    consistency_weight: float = 1.0  # traflow self-consistency; shortcut self-consistency
    shortcut_levels: int = 4  # shortcut: step sizes 2^-1 .. 2^-levels
    total_steps: int | None = None
    steps_per_epoch: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.num_couplings < 1 or self.coupling_steps < 2:
            raise ValueError("num_couplings must be >= 1 and coupling_steps >= 2")
        for name in ("reflow_fraction", "anneal_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.variant == "slimflow" and self.init_from_teacher:
            raise ValueError("variant slimflow trains a smaller student from scratch: set init_from_teacher: false")
        if self.shortcut_levels < 1:
            raise ValueError(f"shortcut_levels must be >= 1, got {self.shortcut_levels}")

    @property
    def schedule(self) -> Schedule:
        return rf.FLOW

    @property
    def coupling_grid(self) -> np.ndarray:
        """The teacher's own `coupling_steps` grid in flow time, from its noise end to 0."""
        teacher = self.teacher_schedule
        with jax.ensure_compile_time_eval():  # a constant, also when asked while tracing
            return np.asarray(rf.flow_time(teacher, np.asarray(teacher.timesteps(self.coupling_steps))), np.float64)

    def flow_x0(self, teacher_model, labels):
        """The teacher's x0 prediction at flow-path points (x_t, t)."""
        t_max = float(self.coupling_grid[0])
        return rf.x0_in_flow_time(self.teacher_x0(teacher_model, labels), self.teacher_schedule, t_max)

    def teacher_velocity(self, teacher_model, labels):
        """The teacher's velocity on the flow path, (x_t - x0) / t."""
        x0_fn = self.flow_x0(teacher_model, labels)
        return lambda x, t: rf.FLOW.velocity_from_x0(x, t, x0_fn(x, t))

    # ---- students ----
    @property
    def step_conditioned(self) -> bool:
        return self.variant == "shortcut"

    def wraps_student(self):
        if self.step_conditioned and not self.guidance_conditioning:
            return dataclasses.replace(self, guidance_conditioning=True).wraps_student()
        return super().wraps_student()

    # ---- state ----
    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        if self.step_conditioned:
            student_params = zero_scalar_conditioning(student_params)
        return student_params, dict(state, couplings=self.make_couplings(state, rng))

    def make_couplings(self, state, rng):
        """{"noise", "trajectory", "labels"}: the teacher's Euler ODE from `num_couplings` noises, in batches."""
        teacher = self.teacher_module(state)
        grid = self.coupling_grid
        shape = (self.num_couplings, *teacher.sample_shape)
        noise = jax.random.normal(rng, shape)
        labels = jnp.arange(self.num_couplings) % teacher.num_classes if self.conditional else None

        @jax.jit
        def solve(noise, labels):  # from x_{t0} = t0 z: the data term (1 - t0) x0 is below the teacher's noise end
            return teacher_trajectory(self.flow_x0(teacher, labels), grid[0] * noise, grid, self.schedule)

        chunks = []
        for start in range(0, self.num_couplings, 1024):
            part = slice(start, start + 1024)
            chunks.append(solve(noise[part], None if labels is None else labels[part]))
        couplings = {"noise": noise, "trajectory": jnp.concatenate(chunks, axis=1)}
        return couplings if labels is None else dict(couplings, labels=labels)

    # ---- the objectives ----
    def velocity(self, model, labels, h=None):
        return lambda x, t: predict(self.schedule, model, x, t, labels, h).velocity

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        keys = jax.random.split(rng, 4)
        couplings = recipe_state["couplings"]
        batch_size = batch["inputs"].shape[0]
        pick = jax.random.randint(keys[0], (batch_size,), 0, self.num_couplings)
        noise, trajectory = couplings["noise"][pick], couplings["trajectory"][:, pick]
        labels = couplings["labels"][pick] if "labels" in couplings else None
        x_data = trajectory[-1]
        step = jnp.asarray(batch["epoch"], jnp.float32) * (self.steps_per_epoch or 1.0)
        total = float(self.total_steps or 1)
        teacher_model = self.teacher_module(recipe_state)
        if self.variant == "traflow":
            return self._traflow(student, teacher_model, trajectory, labels, keys[1])
        if self.variant == "shortcut":
            return self._shortcut(student, teacher_model, x_data, labels, keys)
        ones = jnp.ones((batch_size,))
        one_step = noise - self.velocity(student, labels)(noise, ones)
        if self.variant == "reflow":
            reflow_noise = noise
            distill = rf.one_step_distillation_loss(one_step, x_data)
        else:
            beta = rf.annealing_beta(step, int(self.anneal_fraction * total))
            reflow_noise = rf.annealed_noise(noise, jax.random.normal(keys[2], noise.shape), beta)
            t_mid = jax.random.uniform(keys[3], (batch_size,), minval=0.2, maxval=0.8)
            guide = rf.two_step_prediction(self.teacher_velocity(teacher_model, labels), noise, t_mid)
            distill = rf.flow_guided_distillation_loss(one_step, x_data, guide, guide_weight=self.guide_weight)
        t = jax.random.uniform(keys[1], (batch_size,))
        x_t = rf.interpolate(x_data, reflow_noise, t)
        reflow = rf.reflow_loss(self.velocity(student, labels)(x_t, t), x_data, reflow_noise)
        reflowing = step < self.reflow_fraction * total
        value = jnp.where(reflowing, reflow, distill)
        return value, {"reflow_phase": reflowing.astype(jnp.float32)}, ()

    def _traflow(self, student, teacher_model, trajectory, labels, key):
        steps = trajectory.shape[0] - 1
        batch_size = trajectory.shape[1]
        grid = jnp.asarray(self.coupling_grid, jnp.float32)
        index_key, u_key = jax.random.split(key)
        index = jax.random.randint(index_key, (batch_size,), 0, steps)
        x_t, t = trajectory[index, jnp.arange(batch_size)], grid[index]
        u = t * jax.random.uniform(u_key, (batch_size,))
        total, terms = rf.traflow_loss(
            self.velocity(student, labels),
            self.teacher_velocity(teacher_model, labels),
            x_t,
            t,
            u,
            trajectory[-1],
            reconstruction_weight=self.reconstruction_weight,
            velocity_weight=self.velocity_weight,
            consistency_weight=self.consistency_weight,
        )
        return total, terms, ()

    def _shortcut(self, student, teacher_model, x_data, labels, keys):
        batch_size = x_data.shape[0]
        noise = jax.random.normal(keys[1], x_data.shape)
        t = jax.random.uniform(keys[2], (batch_size,))
        x_t = rf.interpolate(x_data, noise, t)
        zero = jnp.zeros((batch_size,))
        at_zero = predict(self.schedule, student, x_t, t, labels, zero).velocity
        flow = self.teacher_velocity(teacher_model, labels)(x_t, t)
        t2, h = rf.shortcut_steps(keys[3], batch_size, self.shortcut_levels)
        x2 = rf.interpolate(x_data, noise, t2)
        at_2h = predict(self.schedule, student, x2, t2, labels, 2.0 * h).velocity
        u_fn = lambda x, t, h: predict(self.schedule, student, x, t, labels, h).velocity
        target = rf.shortcut_target(u_fn, x2, t2, h)
        return rf.shortcut_loss(at_zero, flow, at_2h, target, consistency_weight=self.consistency_weight)[0], {}, ()

    # ---- sampling ----
    def student_sampler(self, model, nfe: int | None = None):
        """Euler on the uniform grid with the student's velocity; the shortcut student gets h = 1 / nfe."""
        nfe = nfe or self.sampling_nfe
        graphdef, params = nnx.split(model)
        grid = self.schedule.timesteps(nfe)
        schedule, conditioned = self.schedule, self.step_conditioned

        @jax.jit
        def run(params, x_T, labels, rng):
            del rng
            student = nnx.merge(graphdef, params)
            h = jnp.full(x_T.shape[:1], 1.0 / nfe) if conditioned else None
            x = x_T
            for t, s in itertools.pairwise(grid):
                t_b = jnp.full(x.shape[:1], t, jnp.float32)
                x = rf.euler_step(lambda x, t: predict(schedule, student, x, t, labels, h).velocity, x, t_b, s)
            return x

        return run, params


def zero_scalar_conditioning(params):
    """The parameters with the scalar-conditioning embedding's output layer zeroed (`condition.guidance.out`), so the
    extra input starts without effect; unchanged when the denoiser has none."""

    def zero(path, value):
        keys = [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]
        inside = "condition" in keys and "guidance" in keys and "out" in keys
        return jnp.zeros_like(value) if inside else value

    return jax.tree_util.tree_map_with_path(zero, params)

"""Progressive distillation of a diffusion teacher (Salimans & Ho 2022; docs/diffusion_methods.md).

All rounds run in one stage. The grid G of `initial_steps` DDIM steps is the teacher's (`schedule.timesteps`); round
r = 0, 1, ... trains a student of N_r = initial_steps / 2^(r + 1) steps on the grid G[::2^(r + 1)] to match, in each
of its steps t -> s, the two steps t -> m -> s of the round's teacher on G[::2^r]
(`jdistill.diffusion.methods.progressive`). The rounds share the step budget equally; at the end of a round the
student becomes the next round's teacher (`state["teacher"]` and the sampling EMA are reset to its weights), until
the student takes `final_steps` steps. The first teacher is the trained teacher run; the student starts from its
weights, so student and teacher must have the same architecture.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.diffusion.methods import progressive as pd
from jdistill.diffusion.samplers import make_sampler
from jdistill.diffusion.schedules import predict
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation
from jdistill.recipes.dino import copy_params


@dataclasses.dataclass(frozen=True)
class DiffusionProgressive(DiffusionDistillation):
    """Progressive distillation: one student DDIM step matches two teacher steps; rounds halve the NFE."""

    name: str = "diffusion_progressive"
    initial_steps: int = 32  # the first teacher's DDIM steps
    final_steps: int = 4  # the last student's
    weighting: str = "truncated_snr"  # truncated_snr, snr_plus_one or none
    total_steps: int | None = None
    steps_per_epoch: float | None = None

    def __post_init__(self):
        super().__post_init__()
        pd.round_step_counts(self.initial_steps, self.final_steps)  # powers of two, final < initial
        if self.weighting not in pd.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(pd.WEIGHTINGS)}, got {self.weighting!r}")

    @property
    def rounds(self) -> int:
        return int(math.log2(self.initial_steps // self.final_steps))

    @property
    def steps_per_round(self) -> int:
        return max((self.total_steps or self.rounds) // self.rounds, 1)

    @property
    def grid(self) -> np.ndarray:
        """The first teacher's grid G, `initial_steps` intervals, noise end first."""
        return self.schedule.timesteps(self.initial_steps)

    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        shapes = jax.tree.map(jnp.shape, state["teacher"])
        if not self.init_from_teacher or jax.tree.map(jnp.shape, student_params) != shapes:
            raise ConfigError(
                f"recipe {self.name!r}: the student must have the teacher's architecture (student.model as in "
                f"{self.teacher_run}) and init_from_teacher: true"
            )
        return student_params, state

    def after_update(self, recipe_state, params, step):
        state = super().after_update(recipe_state, params, step)
        step = jnp.asarray(step)
        round_over = (step % self.steps_per_round == 0) & (step < self.steps_per_round * self.rounds)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(round_over, a, b), new, old)
        return dict(state, teacher=pick(copy_params(params), state["teacher"]), ema=pick(params, state["ema"]))

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        data_key, step_key, noise_key = jax.random.split(rng, 3)
        x0, labels = self.clean_data(batch, data_key)
        step = jnp.round(jnp.asarray(batch["epoch"], jnp.float32) * (self.steps_per_epoch or 1.0)).astype(jnp.int32)
        round_index, (t, m, s) = self.student_times(step_key, x0.shape[0], step)
        x_t = self.schedule.add_noise(x0, jax.random.normal(noise_key, x0.shape, x0.dtype), t)
        teacher_x0 = self.teacher_x0(self.teacher_module(recipe_state), labels, 1.0)
        x_s = jax.lax.stop_gradient(pd.teacher_two_steps(teacher_x0, x_t, (t, m, s), self.schedule))
        student_x0 = predict(self.schedule, student, x_t, t, labels).x0
        value = pd.progressive_distillation_loss(student_x0, x_s, x_t, (t, s), self.schedule, weighting=self.weighting)
        return value, {"round": round_index.astype(jnp.float32)}, ()

    def student_times(self, key, batch_size: int, step):
        """(round, (t, m, s) `[batch]`): the round of training step `step` and, per example, a random step t -> s of
        its student on G[::2^(r + 1)] with the teacher's midpoint m."""
        round_index = jnp.clip(jnp.asarray(step) // self.steps_per_round, 0, self.rounds - 1)
        half = 2**round_index  # the teacher's stride on G; the student's is 2 * half
        i = jax.random.randint(key, (batch_size,), 0, self.initial_steps // (2 * half))
        grid = jnp.asarray(self.grid, jnp.float32)
        return round_index, (grid[2 * half * i], grid[2 * half * i + half], grid[2 * half * (i + 1)])

    def student_sampler(self, model, nfe: int | None = None):
        """DDIM on the nested grid G[::initial_steps / nfe] the student was trained on (`nfe` divides
        `initial_steps`)."""
        nfe = nfe or self.final_steps
        if self.initial_steps % nfe:
            raise ConfigError(f"nfe={nfe}: a progressive student samples with a divisor of {self.initial_steps}")
        grid = self.grid[:: self.initial_steps // nfe]
        return make_sampler(model, self.schedule, sampler="ddim", nfe=nfe, timesteps=grid)

"""Distribution Backtracking (DisBack) of a one- or few-step generator (docs/diffusion_generators.md).

Zhang et al. 2024. Two stages in one run. *Degradation recording* (at `init`): a copy of the teacher is fine-tuned
by the teacher family's denoising loss on the initial generator's samples for `degrade_steps` Adam steps
(`degrade_learning_rate`, batch `degrade_batch`), its weights kept at `path_checkpoints` = N equal intervals:
the path s_0 (the teacher) ... s_N in `recipe_state["path"]`; the fake score starts as s_N (it already models the
initial generator). *Distribution backtracking*: DMD2's training (`diffusion_dmd`'s generator and fake score, no
regression) with the real score s_{N-1}, s_{N-2}, ..., s_0 in turn, each for an equal share of the first
`backtrack_fraction` of the steps, then the teacher (`jdistill.diffusion.methods.disback`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jdistill.diffusion.methods import disback
from jdistill.diffusion.objectives import teacher_loss
from jdistill.recipes.base import second_network_slot
from jdistill.recipes.diffusion_dmd import FAKE_SCORE, DiffusionDMD


@dataclasses.dataclass(frozen=True)
class DiffusionDisBack(DiffusionDMD):
    """DisBack: distil along the recorded degradation path from the initial generator back to the teacher."""

    name: str = "diffusion_disback"
    variant: str = "dmd2"
    path_checkpoints: int = 4  # N
    degrade_steps: int = 200
    degrade_learning_rate: float = 1e-4
    degrade_batch: int = 128
    backtrack_fraction: float = 0.5
    total_steps: int | None = None  # the stage's steps (filled in by `bind`)
    steps_per_epoch: float | None = None

    def __post_init__(self):
        if self.variant != "dmd2":
            raise ValueError(f"DisBack distils with DMD2's loss (variant dmd2), got {self.variant!r}")
        if self.path_checkpoints < 1 or self.degrade_steps < self.path_checkpoints:
            raise ValueError(
                f"expected path_checkpoints >= 1 and degrade_steps >= path_checkpoints, got {self.path_checkpoints}, "
                f"{self.degrade_steps}"
            )
        if not 0.0 < self.backtrack_fraction <= 1.0:
            raise ValueError(f"backtrack_fraction must be in (0, 1], got {self.backtrack_fraction}")
        super().__post_init__()

    def record_path(self, generator_params, teacher_params, rng):
        """The degradation path `[N + 1, ...]` from the teacher toward the generator `generator_params`' samples."""
        generator = self.denoiser_module(generator_params)

        def loss(params, key):
            sample_key, loss_key = jax.random.split(key)
            x, labels = self.generator_sample(generator, sample_key, self.degrade_batch)
            per_example, _ = teacher_loss(
                self.schedule, self.denoiser_module(params), jax.lax.stop_gradient(x), loss_key, labels
            )
            return jnp.mean(per_example)

        optimizer = optax.adam(self.degrade_learning_rate)
        return disback.record_degradation(
            loss, teacher_params, optimizer, self.degrade_steps, self.path_checkpoints, rng
        )

    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        path = jax.jit(self.record_path)(student_params, state["teacher"], jax.random.fold_in(rng, 5))
        last = jax.tree.map(lambda p: p[-1], path)
        return student_params, dict(state, path=path, **{FAKE_SCORE: second_network_slot(self.second_network(), last)})

    def path_index(self, batch):
        step = jnp.round(jnp.asarray(batch["epoch"], jnp.float32) * (self.steps_per_epoch or 1.0))
        return disback.backtrack_index(step, self.total_steps or 1, self.path_checkpoints, self.backtrack_fraction)

    def loss(self, student, teacher, recipe_state, batch, rng):
        """DMD2's loss with the path checkpoint of this step as the real score."""
        index = self.path_index(batch)
        real = jax.tree.map(lambda p: p[index], recipe_state["path"])
        value, metrics, stats = super().loss(student, teacher, dict(recipe_state, teacher=real), batch, rng)
        return value, dict(metrics, path_index=index.astype(jnp.float32)), stats

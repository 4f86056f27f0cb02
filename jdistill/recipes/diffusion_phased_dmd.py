"""Phased DMD: a few-step generator distilled phase by phase, with score matching within subintervals
(docs/diffusion_generators.md).

Fan et al. 2025. The generator and fake score of `diffusion_dmd` (`GeneratorDistillation`: a K-step copy of the
teacher, the fake score a second copy with its own Adam and update ratio); training is split into K phases of equal
length (`phase_of`, from the batch's step). In phase k the generator's earlier steps (no gradient) bring noise to
x_{t_k}, step k is trained, and its output is re-noised to the phase's end s = t_{k+1} (0 for the last phase):

    generator:   x0 = G(x_{t_k}, t_k),  x_s = alpha(s) x0 + sigma(s) eps,  t in (s, t_k],  x_t = a x_s + b eps'
                 L = 0.5 mean (x_s - sg(x_s - grad))^2,   grad = (x0_fake - x0_real)(x_t, t) / mean|x0 - x0_real|
    fake score:  min w ||x0_psi(x_t, t) - (x_t - sigma(t)^2 eps' / b) / alpha(t)||^2   on x_s held fixed

(`jdistill.diffusion.methods.phased`). The paper trains a separate expert (LoRA) per phase; here one network,
conditioned on time, serves all phases, so a later phase can also move the earlier steps' outputs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.diffusion.methods import dmd, phased
from jdistill.diffusion.schedules import predict
from jdistill.recipes.diffusion_dmd import GeneratorDistillation


@dataclasses.dataclass(frozen=True)
class DiffusionPhasedDMD(GeneratorDistillation):
    """Phased DMD: progressive distribution matching, a generator step per phase, score matching in subintervals."""

    name: str = "diffusion_phased_dmd"
    generator_steps: int = 2  # K phases, one per generator step
    total_steps: int | None = None  # the stage's steps (filled in by `bind`)
    steps_per_epoch: float | None = None

    def __post_init__(self):
        if self.generator_steps < 2:
            raise ValueError(
                f"Phased DMD splits a few-step generator into phases: generator_steps >= 2, got {self.generator_steps}"
            )
        super().__post_init__()

    def phase(self, batch):
        step = jnp.round(jnp.asarray(batch["epoch"], jnp.float32) * (self.steps_per_epoch or 1.0))
        return phased.phase_of(step, self.total_steps or 1, self.generator_steps)

    def phase_sample(self, generator, batch, rng, size: int):
        """(x_s, x0, s `[batch]`, t_k `[batch]`, labels): the current phase's output, its clean estimate and its times,
        differentiable through the phase's own step only."""
        keys = jax.random.split(rng, 4)
        labels = self.draw_labels(keys[0], size)
        z = jax.random.normal(keys[1], (size, *self.teacher().model.sample_shape))
        x0_fn = lambda x, t: predict(self.schedule, generator, x, t, labels).x0
        times = self.times()
        step = jnp.full((size,), self.phase(batch), jnp.int32)
        x_in, t_k = dmd.backward_simulated_input(x0_fn, self.schedule, z, times, step, keys[2])
        x0 = x0_fn(x_in, t_k)
        s = jnp.asarray(phased.boundaries(times), jnp.float32)[step]
        x_s = dmd.renoise(self.schedule, x0, s, jax.random.normal(keys[3], x0.shape))
        return x_s, x0, s, step, labels

    def subinterval(self, rng, x_s, s, step):
        """(x_t, t, eps'): x_s diffused to a time t drawn in the phase's subinterval (s, t_k]."""
        time_key, noise_key = jax.random.split(rng)
        t = phased.subinterval_times(self.schedule, time_key, step, np.asarray(self.times()))
        eps = jax.random.normal(noise_key, x_s.shape)
        return phased.diffuse_from(self.schedule, x_s, s, t, eps), t, eps

    def fake_score_loss(self, params, student, teacher, recipe_state, batch, rng):
        """Score matching within the phase's subinterval on the generator's x_s (held fixed)."""
        del teacher, recipe_state
        sample_key, noise_key = jax.random.split(rng)
        x_s, _, s, step, labels = self.phase_sample(student, batch, sample_key, batch["inputs"].shape[0])
        x_s = jax.lax.stop_gradient(x_s)
        x_t, t, eps = self.subinterval(noise_key, x_s, s, step)
        target, weight = phased.subinterval_target(self.schedule, x_t, s, t, eps)
        x0_pred = predict(self.schedule, self.fake_module(params), x_t, t, labels).x0
        return phased.subinterval_score_loss(x0_pred, target, weight), {}

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        sample_key, noise_key = jax.random.split(rng)
        x_s, x0, s, step, labels = self.phase_sample(student, batch, sample_key, batch["inputs"].shape[0])
        x_t, t, _ = self.subinterval(noise_key, jax.lax.stop_gradient(x_s), s, step)
        real, fake = self.scores(recipe_state, labels)
        value = phased.phase_matching_loss(x_s, x0, real(x_t, t), fake(x_t, t))
        return value, {"distribution_matching": value, "phase": jnp.mean(step.astype(jnp.float32))}, ()

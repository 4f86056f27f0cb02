"""Score identity distillation (SiD) of a one-step generator (docs/diffusion_generators.md).

The two networks of `diffusion_dmd` (generator and fake score, `GeneratorDistillation`) with SiD's losses
(Zhou et al. 2024): the fake score learns by the teacher family's denoising score matching on the generator's samples
at the teacher's training times (EDM: ln sigma ~ N(p_mean, p_std^2)); the generator minimises SiD's fused loss
(`jdistill.diffusion.methods.sid.sid_generator_loss`, alpha = 1.2) at times among [time_low, time_high] of the
teacher's 1000-step grid (the paper's t_max = 800: sigma below the grid's value at 20% of the way from sigma_max),
with the gradient through x_t into both scores. The generator starts as the teacher at `generator_time` (the paper's
sigma_init = 2.5 for EDM teachers: x = D(2.5 z; 2.5)). Data-free: the batch only sets the batch size.
"""

from __future__ import annotations

import dataclasses

import jax

from jdistill.diffusion.methods import dmd
from jdistill.diffusion.methods.sid import SID_ALPHA, sid_generator_loss
from jdistill.recipes.diffusion_dmd import GeneratorDistillation


@dataclasses.dataclass(frozen=True)
class DiffusionSiD(GeneratorDistillation):
    """SiD: score identity distillation, alpha-fused generator loss, data-free."""

    name: str = "diffusion_sid"
    alpha: float = SID_ALPHA
    time_low: float = 0.2
    time_high: float = 1.0

    def fake_score_times(self, rng, batch: int):
        return None  # the teacher family's training times (`schedule.sample_t`)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        size = batch["inputs"].shape[0]
        sample_key, time_key, noise_key = jax.random.split(rng, 3)
        x_g, labels = self.generator_sample(student, sample_key, size)
        t = self.loss_times(time_key, size)
        x_t = dmd.renoise(self.schedule, x_g, t, jax.random.normal(noise_key, x_g.shape))
        real, fake = self.scores(recipe_state, labels)
        value = sid_generator_loss(x_g, real(x_t, t), fake(x_t, t), self.alpha)
        return value, {"sid": value}, ()

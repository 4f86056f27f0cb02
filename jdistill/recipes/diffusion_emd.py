"""EM distillation (EMD) of a one-step generator (docs/diffusion_generators.md).

Xie et al. 2024, "EM Distillation for One-step Diffusion Models". The generator and fake score of `diffusion_dmd`
(DMD2's setting: no regression, the fake score trained by denoising on the generator's samples with its own Adam and
update ratio). Each generator update is one EM iteration: the E-step refines the generator's draw (z, eps) by
`mcmc_steps` Langevin steps of size `mcmc_step_size` on log p_t(x_t) - log q_t(x_t) - |z|^2 / 2 - |eps|^2 / 2 with
x_t = alpha(t) g(z) + sigma(t) eps, the teacher's and fake score's x0 predictions giving the score difference, and
noise cancellation on eps (`jdistill.diffusion.methods.emd.langevin`); the M-step is DMD's distribution-matching
update at the refined pair, x = g(z*) with x_t = alpha(t) x + sigma(t) eps* (`dmd.distribution_matching_loss`).
`mcmc_steps: 0` is DMD2's one-step update.
"""

from __future__ import annotations

import dataclasses

import jax

from jdistill.diffusion.methods import dmd, emd
from jdistill.diffusion.schedules import predict
from jdistill.recipes.diffusion_dmd import DiffusionDMD


@dataclasses.dataclass(frozen=True)
class DiffusionEMD(DiffusionDMD):
    """EMD: DMD's update at generator latents refined by Langevin MCMC toward the teacher (an EM loop)."""

    name: str = "diffusion_emd"
    variant: str = "dmd2"
    mcmc_steps: int = 2
    mcmc_step_size: float = 0.01
    cancel_noise: bool = True

    def __post_init__(self):
        if self.variant != "dmd2" or self.generator_steps != 1:
            raise ValueError(
                f"EMD distils a one-step generator without regression: variant dmd2, generator_steps 1 (got "
                f"{self.variant!r}, {self.generator_steps})"
            )
        if self.mcmc_steps < 0 or self.mcmc_step_size < 0:
            raise ValueError(
                f"mcmc_steps and mcmc_step_size must be >= 0, got {self.mcmc_steps}, {self.mcmc_step_size}"
            )
        super().__post_init__()

    def one_step(self, generator, labels):
        """g(z): the one-step generator's sample from noise z."""
        t_1 = self.times()[0]
        return lambda z: predict(self.schedule, generator, dmd.noise_input(self.schedule, z, t_1), t_1, labels).x0

    def refine(self, generator, recipe_state, z, eps, t, labels, rng):
        """The E-step: (z*, eps*) after the Langevin steps (held fixed)."""
        real, fake = self.scores(recipe_state, labels)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)

        def grad_log_target(state):
            return emd.log_target_grad(
                self.one_step(generator, labels), lambda x: real(x, t), lambda x: fake(x, t), alpha, sigma, *state
            )

        refined = emd.langevin(grad_log_target, z, eps, self.mcmc_steps, self.mcmc_step_size, rng, self.cancel_noise)
        return jax.lax.stop_gradient(refined)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        size = batch["inputs"].shape[0]
        label_key, z_key, time_key, noise_key, mcmc_key = jax.random.split(rng, 5)
        labels = self.draw_labels(label_key, size)
        z = jax.random.normal(z_key, (size, *self.teacher().model.sample_shape))
        t = self.loss_times(time_key, size)
        z, eps = self.refine(student, recipe_state, z, jax.random.normal(noise_key, z.shape), t, labels, mcmc_key)
        x = self.one_step(student, labels)(z)
        x_t = jax.lax.stop_gradient(dmd.renoise(self.schedule, x, t, eps))
        real, fake = self.scores(recipe_state, labels)
        matching = dmd.distribution_matching_loss(x, real(x_t, t), fake(x_t, t))
        return matching, {"distribution_matching": matching}, ()

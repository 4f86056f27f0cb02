"""Latent adversarial diffusion distillation (LADD) of a one- or few-step generator (docs/diffusion_generators.md).

Sauer et al. 2024, "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation": the
generator (a copy of the teacher, `GeneratorDistillation`'s K-step generator) is trained by an adversarial loss
alone; the discriminator is the *frozen teacher's* features after each of its blocks, each read by its own small
head (`jdistill.diffusion.methods.adversarial.DiscriminatorHeads`, conditioned on the teacher's time + class
embedding), on noised real and generated samples x_t = alpha(t) x + sigma(t) eps, the discriminator's times drawn
logit-normal toward high noise (`logit_normal_times`, m = `time_mean`, s = `time_std`). Hinge losses:

    heads:      L_D = mean relu(1 - D(x_t^real)) + mean relu(1 + D(x_t^fake)),   x^fake = G(z) held fixed
    generator:  L_G = -mean D(x_t^fake),   the gradient through x_t and the frozen teacher's features

The heads are the recipe's second network ("discriminator", with the fake-score options' Adam and update ratio:
`fake_learning_rate`, `fake_b1`, `fake_b2`, `fake_updates_per_step`). Real samples are the training images (the paper
also distils from the teacher's own samples). No fake score and no distribution matching.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.methods import adversarial, dmd
from jdistill.diffusion.methods.adversarial import DiscriminatorHeads, feature_levels, feature_width
from jdistill.recipes.base import SecondNetwork, second_network_slot
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation
from jdistill.recipes.diffusion_dmd import GeneratorDistillation

DISCRIMINATOR = "discriminator"


@dataclasses.dataclass(frozen=True)
class DiffusionLADD(GeneratorDistillation):
    """LADD: adversarial distillation with discriminator heads on the frozen teacher's features."""

    name: str = "diffusion_ladd"
    time_mean: float = 1.0  # logit-normal location of the discriminator's times (> 0: toward high noise)
    time_std: float = 1.0
    head_hidden: int = 64

    def __post_init__(self):
        if self.time_std <= 0 or self.head_hidden < 1:
            raise ValueError(f"time_std must be > 0 and head_hidden >= 1, got {self.time_std}, {self.head_hidden}")
        super().__post_init__()

    def _heads(self, rngs):
        teacher = self.teacher().model
        return DiscriminatorHeads(feature_width(teacher), feature_levels(teacher), self.head_hidden, rngs=rngs)

    def heads_module(self, params):
        return nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: self._heads(nnx.Rngs(0)))), params)

    def second_network(self) -> SecondNetwork:
        return SecondNetwork(DISCRIMINATOR, self.fake_optimizer(), self.discriminator_loss, self.fake_updates_per_step)

    def init(self, student_params, teacher_params, rng):
        student_params, state = DiffusionDistillation.init(self, student_params, teacher_params, rng)
        heads = nnx.state(self._heads(nnx.Rngs(jax.random.fold_in(rng, 3))), nnx.Param)
        return student_params, dict(state, **{DISCRIMINATOR: second_network_slot(self.second_network(), heads)})

    def disc_times(self, rng, batch: int):
        return adversarial.logit_normal_times(self.schedule, rng, batch, self.time_mean, self.time_std)

    def logits(self, head_params, recipe_state, x, t, eps, labels):
        """D(x_t) `[batch]`: the heads on the frozen teacher's features at x_t = alpha(t) x + sigma(t) eps."""
        x_t = dmd.renoise(self.schedule, x, t, eps)
        teacher = self.teacher_module(recipe_state)
        return adversarial.discriminator_logits(self.heads_module(head_params), teacher, x_t, t, labels)

    def discriminator_loss(self, params, student, teacher, recipe_state, batch, rng):
        """The heads' hinge loss on noised training images and generator samples (held fixed)."""
        del teacher
        size = batch["inputs"].shape[0]
        sample_key, data_key, time_key, noise_key = jax.random.split(rng, 4)
        x, labels = self.generator_sample(student, sample_key, size)
        real, real_labels = self.clean_data(batch, data_key)
        t_real, t_fake = jnp.split(self.disc_times(time_key, 2 * size), 2)
        eps_real, eps_fake = jax.random.normal(noise_key, (2, *x.shape))
        real_logits = self.logits(params, recipe_state, real, t_real, eps_real, real_labels)
        fake_logits = self.logits(params, recipe_state, jax.lax.stop_gradient(x), t_fake, eps_fake, labels)
        value = adversarial.discriminator_loss(real_logits, fake_logits, "hinge")
        return value, {"real_logit": jnp.mean(real_logits), "fake_logit": jnp.mean(fake_logits)}

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        size = batch["inputs"].shape[0]
        sample_key, time_key, noise_key = jax.random.split(rng, 3)
        x, labels = self.generator_sample(student, sample_key, size)
        t = self.disc_times(time_key, size)
        heads = jax.lax.stop_gradient(recipe_state[DISCRIMINATOR]["params"])
        logits = self.logits(heads, recipe_state, x, t, jax.random.normal(noise_key, x.shape), labels)
        value = adversarial.generator_loss(logits, "hinge")
        return value, {"adversarial": value}, ()

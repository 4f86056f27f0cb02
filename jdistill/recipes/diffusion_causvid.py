"""From bidirectional to causal (CausVid) on digit videos: the bidirectional video teacher and the causal, few-step,
KV-cached student distilled from it with DMD (docs/diffusion_generators.md).

Yin et al. 2025, "From Slow Bidirectional to Fast Autoregressive Video Diffusion Models". The toy video: F frames
of 8x8 digits counting up from the label (`jdistill.diffusion.methods.causvid.digit_video`, built from the batch's
training images).

- `diffusion_video_edm`: the teacher, an EDM denoiser of whole videos with bidirectional attention over all frames
  (`VideoDenoiser`, causal=False), trained like `diffusion_edm` (EMA weights kept).
- `diffusion_causvid`: the student, the same network with block-causal attention (started from the teacher's
  weights), sampled autoregressively: each frame in `generator_steps` steps attending to the KV cache of the frames
  before it (`generate_video`). Trained with DMD2's distribution matching against the bidirectional teacher and a
  bidirectional fake score on its own autoregressive rollouts (asymmetric distillation), the gradient through the
  whole rollout. Not done: CausVid's initialisation of the student by regression on the teacher's ODE pairs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.diffusion.methods.causvid import VideoDenoiser, digit_video, generate_video
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_dmd import DiffusionDMD
from jdistill.recipes.diffusion_teacher import IMAGES, DiffusionEDM


def _video_data(recipe, batch, rng, frames: int):
    if recipe.data != IMAGES:
        raise ConfigError(f"recipe {recipe.name!r}: digit videos are made of images (distill.options.data: images)")
    labels = batch["labels"]
    return digit_video(2.0 * batch["inputs"] - 1.0, labels, frames, rng), labels if recipe.conditional else None


@dataclasses.dataclass(frozen=True)
class DiffusionVideoEDM(DiffusionEDM):
    """EDM video teacher: a bidirectional denoiser of digit videos (frames counting up from the label); EMA kept."""

    name: str = "diffusion_video_edm"
    frames: int = 4

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        super().__post_init__()

    def wraps_student(self):
        schedule, frames, conditional = self.schedule, self.frames, self.conditional

        def build(model_config, rngs):
            num_classes = model_config.num_classes if conditional else 0
            return VideoDenoiser(model_config, schedule, frames, num_classes=num_classes, causal=False, rngs=rngs)

        return build

    def clean_data(self, batch, rng):
        return _video_data(self, batch, rng, self.frames)


@dataclasses.dataclass(frozen=True)
class DiffusionCausVid(DiffusionDMD):
    """CausVid: a causal, few-step, KV-cached video student distilled from a bidirectional teacher with DMD."""

    name: str = "diffusion_causvid"
    variant: str = "dmd2"
    generator_steps: int = 2  # denoising steps per frame

    def __post_init__(self):
        if self.variant != "dmd2":
            raise ValueError(f"CausVid distils with DMD2's loss (variant dmd2), got {self.variant!r}")
        super().__post_init__()

    @property
    def frames(self) -> int:
        return self.teacher().model.frames

    def check(self, config):
        if not isinstance(self.teacher().model, VideoDenoiser):
            raise ConfigError(
                "distill.options.teacher_run: CausVid distils a video teacher (a run of diffusion_video_edm)"
            )
        super().check(config)

    def wraps_student(self):
        schedule, conditional = self.schedule, self.conditional

        def build(model_config, rngs):
            num_classes = model_config.num_classes if conditional else 0
            return VideoDenoiser(model_config, schedule, self.frames, num_classes=num_classes, causal=True, rngs=rngs)

        return build

    def clean_data(self, batch, rng):
        return _video_data(self, batch, rng, self.frames)

    @property
    def context_time(self) -> float:
        """The time at which finished frames enter the KV cache: the smallest positive time of the 1000-step grid."""
        return float(np.asarray(self.schedule.timesteps(1000))[-2])

    def generator_sample_steps(self, generator, rng, batch: int):
        """(the student's autoregressive video `[batch, F, ...]`, labels, zeros): differentiable through the rollout."""
        label_key, noise_key, rollout_key = jax.random.split(rng, 3)
        labels = self.draw_labels(label_key, batch)
        z = jax.random.normal(noise_key, (batch, *self.teacher().model.sample_shape))
        video = generate_video(generator, self.schedule, z, self.times(), labels, rollout_key, self.context_time)
        return video, labels, jnp.zeros((batch,), jnp.int32)

    def student_sampler(self, model, nfe: int | None = None):
        """`run(params, x_T, labels, rng)`: the autoregressive video from z = x_T / sigma(t_max), `nfe` steps per frame
        (plus one cache pass per frame)."""
        graphdef, params = nnx.split(model)
        schedule, times, context = self.schedule, self.times(nfe or self.sampling_nfe), self.context_time
        sigma_max = float(schedule.sigma(schedule.t_max))

        @jax.jit
        def run(params, x_T, labels, rng):
            return generate_video(nnx.merge(graphdef, params), schedule, x_T / sigma_max, times, labels, rng, context)

        return run, params

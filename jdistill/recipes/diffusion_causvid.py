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
  whole rollout. CausVid's initialisation (`ode_init_steps` > 0): before distillation, at `init`, the causal student
  regresses its own autoregressive rollout from noise z onto the bidirectional teacher's ODE sample from the same z
  (`num_pairs` pairs, `pair_sampler` at `pair_nfe`, as DMD's regression pairs) for `ode_init_steps` Adam steps,

      min_theta  mean || rollout_theta(z) - ODE_teacher(z) ||^2,

  and DMD starts from the result (the EMA too). The paper regresses the student at each of its few-step times on the
  teacher's ODE trajectory; here the K-step rollout as a whole regresses on the trajectory's end.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdistill.diffusion.methods.causvid import VideoDenoiser, digit_video, generate_video
from jdistill.diffusion.methods.common import per_example_distance
from jdistill.diffusion.methods.disback import record_degradation
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_dmd import DiffusionDMD
from jdistill.recipes.diffusion_teacher import IMAGES, DiffusionEDM
from jdistill.recipes.dino import copy_params


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
    ode_init_steps: int = 0  # CausVid's initialisation: Adam steps of regression on the teacher's ODE pairs (0: off)
    ode_init_learning_rate: float = 3e-4
    ode_init_batch: int = 64

    def __post_init__(self):
        if self.variant != "dmd2":
            raise ValueError(f"CausVid distils with DMD2's loss (variant dmd2), got {self.variant!r}")
        if self.ode_init_steps < 0 or self.ode_init_batch < 1 or self.ode_init_learning_rate < 0:
            raise ValueError(
                "expected ode_init_steps >= 0, ode_init_batch >= 1 and ode_init_learning_rate >= 0, got "
                f"{self.ode_init_steps}, {self.ode_init_batch}, {self.ode_init_learning_rate}"
            )
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

    def causal_module(self, params):
        """The causal student (the teacher's network, block-causal attention) with `params`."""
        teacher = self.teacher().model
        make = lambda: VideoDenoiser(
            teacher.config, self.schedule, self.frames, num_classes=teacher.num_classes, causal=True, rngs=nnx.Rngs(0)
        )
        return nnx.merge(nnx.graphdef(nnx.eval_shape(make)), params)

    def ode_regression_loss(self, params, pairs, rng):
        """mean || rollout(z) - y ||^2 over `ode_init_batch` of the teacher's ODE pairs (z, y)."""
        pick_key, rollout_key = jax.random.split(rng)
        pick = jax.random.randint(pick_key, (self.ode_init_batch,), 0, pairs["noise"].shape[0])
        labels = pairs["labels"][pick] if "labels" in pairs else None
        video = generate_video(
            self.causal_module(params), self.schedule, pairs["noise"][pick], self.times(), labels, rollout_key,
            self.context_time,
        )  # fmt: skip
        return jnp.mean(per_example_distance(video, pairs["samples"][pick]))

    def ode_init(self, student_params, pairs, rng):
        """The student after `ode_init_steps` Adam steps of `ode_regression_loss` (the path's last point)."""
        optimizer = optax.adam(self.ode_init_learning_rate)
        loss = lambda params, key: self.ode_regression_loss(params, pairs, key)
        path = record_degradation(loss, student_params, optimizer, self.ode_init_steps, 1, rng)
        return jax.tree.map(lambda p: p[-1], path)

    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        if not self.ode_init_steps:
            return student_params, state
        pairs = self.make_pairs(state, jax.random.fold_in(rng, 11))
        student_params = jax.jit(self.ode_init)(student_params, pairs, jax.random.fold_in(rng, 12))
        return student_params, dict(state, ema=copy_params(student_params))

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

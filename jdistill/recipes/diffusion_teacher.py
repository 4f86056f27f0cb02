"""Diffusion and flow teachers trained through the standard train step (docs/diffusion.md).

The trained module is a denoiser (`wraps_student`): a DiT over the batch's images (sizes, heads, SDPA gate and MLP
from `student.model`; class-conditional on the batch's labels with a null class) or, with `data` naming a 2-D toy
distribution (`jdistill.diffusion.data`), a residual MLP of width `d_model` and `num_layers` blocks. Per step:

    x0     = 2 inputs - 1                 (images in [0, 1] -> [-1, 1]), or `data` points drawn from the step key
    labels = the batch's labels, each replaced by the null class with probability `label_dropout` (CFG training)
    L      = mean over the batch of the family's objective (`jdistill.diffusion.objectives.teacher_loss`):
             diffusion_edm:  EDM denoising score matching, lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2
             diffusion_flow: flow matching, ||v(x_t, t) - (eps - x0)||^2 on x_t = (1 - t) x0 + t eps
             diffusion_vp:   DDPM's ||eps_hat - eps||^2 (or the x0 / v parameterisation)
    theta_ema <- m theta_ema + (1 - m) theta,  m = min(ema_decay, (1 + k) / (10 + k)) after update k (the warm-up
             of `ema_warmup`, as in TensorFlow's ExponentialMovingAverage with num_updates; off: m = ema_decay)

The EMA weights live in the recipe state (`{"ema": params}`), are checkpointed with the stage and are what
`jdistill.diffusion.load.load_denoiser` returns for sampling. No teacher runs in the step (policy `none`); the
stage's evaluation (`evaluated_params`) is the denoising loss of those EMA weights on the test split at fixed times
and noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill.diffusion.data import TOY_2D, toy2d_sampler
from jdistill.diffusion.denoisers import DiT, MLPDenoiser
from jdistill.diffusion.objectives import teacher_loss
from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow, Schedule
from jdistill.errors import ConfigError
from jdistill.losses.ssl import ema_update
from jdistill.recipes.base import RecipeBase, require_kind
from jdistill.recipes.dino import copy_params

IMAGES = "images"
EVAL_SEED = 20251130  # fixed times and noise of the held-out denoising loss


def ema_decay_at(step, decay: float, warmup: bool):
    """The EMA decay after optimizer update `step` (1-based): min(decay, (1 + step) / (10 + step)) with warm-up."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


@dataclasses.dataclass(frozen=True)
class DiffusionTeacher(RecipeBase):
    """Shared options of the diffusion teachers (subclasses set the schedule)."""

    data: str = IMAGES  # "images": the batch's images; or a 2-D toy: 8gaussians, two_moons, checkerboard
    class_conditional: bool = True
    label_dropout: float = 0.1
    guidance_conditioning: bool = False
    ema_decay: float = 0.999
    ema_warmup: bool = True
    teacher_policy: str = "none"

    def __post_init__(self):
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.data != IMAGES and self.data not in TOY_2D:
            raise ValueError(f"data must be {IMAGES} or a 2-D toy ({', '.join(TOY_2D)}), got {self.data!r}")
        if self.data != IMAGES and self.class_conditional:
            raise ValueError(f"data {self.data} has no labels: set class_conditional: false")
        self.schedule  # noqa: B018 -- the schedule's options are valid

    @property
    def schedule(self) -> Schedule:
        raise NotImplementedError

    @property
    def conditional(self) -> bool:
        return self.class_conditional and self.data == IMAGES

    def check(self, config):
        require_kind(self.name, config, "classifier")
        model = config.student.model
        if self.data == IMAGES and model.classifier_input != "patches":
            raise ConfigError(f"recipe {self.name!r} denoises images: set student.model.classifier_input=patches")

    def wraps_student(self):
        schedule, conditional, guidance, data = self.schedule, self.conditional, self.guidance_conditioning, self.data

        def build(model_config, rngs):
            if data == IMAGES:
                num_classes = model_config.num_classes if conditional else 0
                return DiT(model_config, schedule, num_classes=num_classes, guidance_conditioning=guidance, rngs=rngs)
            return MLPDenoiser(
                schedule,
                hidden=model_config.d_model,
                num_layers=model_config.num_layers,
                guidance_conditioning=guidance,
                rngs=rngs,
            )

        return build

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        return student_params, {"ema": copy_params(student_params)}

    def evaluated_params(self, params, recipe_state):
        """The EMA weights: what is sampled and deployed is what the stage's evaluation scores."""
        del params
        return recipe_state["ema"]

    def after_update(self, recipe_state, params, step):
        decay = ema_decay_at(step, self.ema_decay, self.ema_warmup)
        return dict(recipe_state, ema=ema_update(recipe_state["ema"], params, decay))

    def clean_data(self, batch, rng):
        """(x0, labels or None): the batch's images in [-1, 1] with its labels, or toy points from `rng`."""
        if self.data == IMAGES:
            return 2.0 * batch["inputs"] - 1.0, batch["labels"] if self.conditional else None
        return toy2d_sampler(self.data)(rng, batch["inputs"].shape[0]), None

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, recipe_state
        data_key, loss_key = jax.random.split(rng)
        x0, labels = self.clean_data(batch, data_key)
        per_example, _ = teacher_loss(self.schedule, student, x0, loss_key, labels, label_dropout=self.label_dropout)
        return jnp.mean(per_example), {}, ()

    def eval_stats(self):
        def stats(model, batch):
            data_key, loss_key = jax.random.split(jax.random.key(EVAL_SEED))
            x0, labels = self.clean_data(batch, data_key)
            per_example, _ = teacher_loss(self.schedule, model, x0, loss_key, labels)
            mask = batch["mask"].astype(jnp.float32)
            return {"denoising_loss": jnp.sum(per_example * mask), "count": jnp.sum(mask)}

        return stats


@dataclasses.dataclass(frozen=True)
class DiffusionEDM(DiffusionTeacher):
    """EDM teacher (Karras et al. 2022): denoising score matching with EDM preconditioning; EMA weights kept."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    name: str = "diffusion_edm"

    @property
    def schedule(self) -> Schedule:
        return EDM(self.sigma_data, self.sigma_min, self.sigma_max, self.rho, self.p_mean, self.p_std)


@dataclasses.dataclass(frozen=True)
class DiffusionFlow(DiffusionTeacher):
    """Flow-matching teacher (Lipman et al. 2023; rectified flow, Liu et al. 2023); EMA weights kept."""

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    name: str = "diffusion_flow"

    @property
    def schedule(self) -> Schedule:
        return RectifiedFlow(self.time_sampling, self.logit_mean, self.logit_std)


@dataclasses.dataclass(frozen=True)
class DiffusionVP(DiffusionTeacher):
    """DDPM teacher (Ho et al. 2020) in continuous VP time: noise regression; DDIM-ready; EMA weights kept."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    prediction: str = "eps"
    t_min: float = 1e-3
    name: str = "diffusion_vp"

    @property
    def schedule(self) -> Schedule:
        return VP(self.beta_min, self.beta_max, self.prediction, self.t_min)

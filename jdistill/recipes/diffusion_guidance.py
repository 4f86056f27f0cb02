"""Guidance distillation of a class-conditional diffusion teacher (docs/diffusion_methods.md, `variant` chooses):

    student   a guidance-conditioned copy of the teacher, all of it trained (Meng et al. 2023)
    adapter   the teacher frozen; only the guidance-scale embedding (which feeds every block's modulation) trains
              (adapter guidance distillation, Jensen et al. 2025)
    lora      LoRA factors on every kernel of the frozen teacher, one guidance strength `lora_guidance` (Golnari 2023)
    guide     plug-and-play: the frozen teacher's conditional output plus w times a light guide model's
              (Hsiao et al. 2024); the guide is a denoiser of `guide_layers` x `guide_d_model`

Per step: x_t = alpha x0 + sigma eps at t ~ the teacher's training times, w ~ U[guidance_min, guidance_max] per example
(lora: w = `lora_guidance`), and the student's x0 at (x_t, t, c, guidance_scale = 1 + w) regresses the teacher's
(1 + w) x0_c - w x0_u (`methods.guidance.guidance_distillation_loss`). Frozen parts receive no gradient
(`forward_params` stops it; the optimizer's weight decay must be 0 so it does not shrink them). The distilled
student samples with one network pass per step: `make_sampler(..., guidance_scale=1 + w)`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.denoisers import DiT, MLPDenoiser
from jdistill.diffusion.methods import guidance
from jdistill.diffusion.methods.wrappers import LoRADenoiser, PlugAndPlayDenoiser, path_name
from jdistill.diffusion.samplers import make_sampler
from jdistill.diffusion.schedules import predict
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation, merge_params
from jdistill.recipes.diffusion_rectified import zero_scalar_conditioning
from jdistill.recipes.diffusion_teacher import IMAGES

VARIANTS = ("student", "adapter", "lora", "guide")


@dataclasses.dataclass(frozen=True)
class DiffusionGuidance(DiffusionDistillation):
    """Guidance distillation: one pass gives the CFG-guided prediction (full student, adapter, LoRA, plug-and-play)."""

    name: str = "diffusion_guidance"
    variant: str = "student"
    guidance_min: float = 0.0  # w range; jdistill's samplers use guidance_scale = 1 + w
    guidance_max: float = 4.0
    lora_guidance: float = 2.0
    lora_rank: int = 4
    guide_d_model: int = 32
    guide_layers: int = 1
    sampling_guidance: float = 2.0  # w of `student_sampler`
    sampler: str = "heun"
    label_dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not self.guidance_min <= self.guidance_max:
            raise ValueError(f"guidance_min ({self.guidance_min}) must not exceed guidance_max ({self.guidance_max})")
        if self.lora_rank < 1 or self.guide_d_model < 1 or self.guide_layers < 1:
            raise ValueError("lora_rank, guide_d_model and guide_layers must be >= 1")

    def check(self, config):
        super().check(config)
        if not self.conditional:
            raise ConfigError(f"recipe {self.name!r}: guidance needs a class-conditional teacher ({self.teacher_run})")
        if self.variant != "student" and config.student.train.weight_decay:
            raise ConfigError(
                f"variant {self.variant}: the teacher's weights are frozen; set student.train.weight_decay=0"
            )

    # ---- the student module ----
    def wraps_student(self):
        conditioned = self.variant in ("student", "adapter")
        build_base = dataclasses.replace(self, guidance_conditioning=conditioned).teacher_builder()
        variant, rank, guide_config = self.variant, self.lora_rank, (self.guide_d_model, self.guide_layers)

        def build(model_config, rngs):
            base = build_base(model_config, rngs)
            if variant == "lora":
                return LoRADenoiser(base, rank=rank, alpha=float(rank), rngs=rngs)
            if variant == "guide":
                return PlugAndPlayDenoiser(base, self._guide(model_config, guide_config, rngs))
            return base

        return build

    def teacher_builder(self):
        return DiffusionDistillation.wraps_student(self)

    def _guide(self, model_config, guide_config, rngs):
        width, layers = guide_config
        if self.data == IMAGES:
            small = dataclasses.replace(model_config, d_model=width, num_layers=layers, mlp_dim=2 * width)
            return DiT(
                small, self.schedule, num_classes=model_config.num_classes, guidance_conditioning=True, rngs=rngs
            )
        return MLPDenoiser(self.schedule, hidden=width, num_layers=layers, guidance_conditioning=True, rngs=rngs)

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        teacher = nnx.state(self.teacher().model)
        if self.variant in ("lora", "guide"):
            student_params["base"] = merge_params(student_params["base"], teacher)
        else:
            student_params = zero_scalar_conditioning(merge_params(student_params, teacher))
        return student_params, {
            "ema": jax.tree.map(jnp.copy, student_params),
            "teacher": jax.tree.map(jnp.copy, teacher),
        }

    def trainable(self, name: str) -> bool:
        """Whether the parameter at path `name` trains under this variant."""
        if self.variant == "student":
            return True
        if self.variant == "adapter":
            return name.startswith("condition/guidance/")
        if self.variant == "lora":
            return name.startswith(("lora_a/", "lora_b/"))
        return name.startswith("guide/")

    def forward_params(self, params):
        if self.variant == "student":
            return params
        return jax.tree_util.tree_map_with_path(
            lambda path, value: value if self.trainable(path_name(path)) else jax.lax.stop_gradient(value), params
        )

    # ---- the objective ----
    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        data_key, t_key, noise_key, w_key = jax.random.split(rng, 4)
        x0, labels = self.clean_data(batch, data_key)
        batch_size = x0.shape[0]
        t = self.schedule.sample_t(t_key, (batch_size,))
        x_t = self.schedule.add_noise(x0, jax.random.normal(noise_key, x0.shape, x0.dtype), t)
        if self.variant == "lora":
            w = jnp.full((batch_size,), self.lora_guidance)
        else:
            w = guidance.sample_guidance_strength(w_key, batch_size, self.guidance_min, self.guidance_max)
        teacher_model = self.teacher_module(recipe_state)
        null = jnp.full_like(labels, teacher_model.null_label)
        both = predict(
            self.schedule,
            teacher_model,
            jnp.concatenate([x_t, x_t]),
            jnp.concatenate([t, t]),
            jnp.concatenate([labels, null]),
        ).x0
        conditional, unconditional = jnp.split(both, 2)
        scale = None if self.variant == "lora" else 1.0 + w
        student_x0 = predict(self.schedule, student, x_t, t, labels, scale).x0
        return guidance.guidance_distillation_loss(student_x0, conditional, unconditional, w), {}, ()

    def student_sampler(self, model, nfe: int | None = None):
        scale = 1.0 if self.variant == "lora" else 1.0 + self.sampling_guidance
        return make_sampler(
            model, self.schedule, sampler=self.sampler, nfe=nfe or self.sampling_nfe, guidance_scale=scale
        )

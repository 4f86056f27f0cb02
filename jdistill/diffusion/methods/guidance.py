"""Guidance distillation: one network evaluation that gives the classifier-free-guided prediction.

Classifier-free guidance (Ho & Salimans 2022) evaluates the teacher twice per step, conditional and unconditional
(the null class), and extrapolates. Meng et al. 2023 ("On Distillation of Guided Diffusion Models") train a student
that takes the guidance strength w as an input to regress the guided teacher in one pass:

    target = (1 + w) x_c - w x_u,     L = E_w || x_student(x_t, t, c, w) - sg target ||^2,

in any output space (x0, eps, velocity or a raw output affine in them: the combination commutes with the affine
map). w = 0 is the conditional teacher; jdistill's samplers write the same guidance with the scale
`guidance_scale = 1 + w` (`jdistill.diffusion.samplers.guided_denoiser`). The variants differ only in what is
trained, all with this objective:

- full student (Meng et al.): a guidance-conditioned copy of the teacher, all of it trained;
- adapter (Jensen et al. 2025, "Efficient Distillation of Classifier-Free Guidance using Adapters"): the teacher
  frozen, a small added module trained (here the guidance-scale embedding that feeds every block's modulation);
- LoRA (Golnari 2023, "LoRA-Enhanced Distillation on Guided Diffusion Models"): low-rank updates of the frozen
  teacher's kernels, at one w (`lora_merge`);
- plug-and-play (Hsiao et al. 2024, "Plug-and-Play Diffusion Distillation"): the frozen teacher's conditional
  output plus w times a light guide model's output (`plug_and_play_output`); the guide learns the guidance
  direction x_c - x_u, so it transfers to fine-tuned versions of the same teacher.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import regression_loss
from jdistill.diffusion.schedules import expand_to


def guided_target(conditional: ArrayLike, unconditional: ArrayLike, w: ArrayLike) -> Array:
    """(1 + w) x_c - w x_u, `w` a scalar or `[batch]` (lifted to broadcast against the predictions)."""
    conditional = jnp.asarray(conditional)
    w = expand_to(jnp.asarray(w, jnp.float32), conditional)
    return jnp.asarray((1.0 + w) * conditional - w * jnp.asarray(unconditional))


def guidance_distillation_loss(
    student: ArrayLike, conditional: ArrayLike, unconditional: ArrayLike, w: ArrayLike
) -> Array:
    """E || student - sg((1 + w) x_c - w x_u) ||^2: mean over the batch of per-example mean squared errors."""
    return regression_loss(student, guided_target(conditional, unconditional, w))


def sample_guidance_strength(key: Array, batch: int, w_min: float, w_max: float) -> Array:
    """w ~ U[w_min, w_max] per example (Meng et al. sample w uniformly over the range the sampler will use)."""
    return jax.random.uniform(key, (batch,), minval=w_min, maxval=w_max)


def plug_and_play_output(base_conditional: ArrayLike, guide_output: ArrayLike, w: ArrayLike) -> Array:
    """The plug-and-play prediction: x_c(teacher) + w g(x_t, t, c, w). The guide g stands for x_c - x_u, so a zero
    guide (its initialisation) is the conditional teacher, which is the guided target at w = 0."""
    base_conditional = jnp.asarray(base_conditional)
    return base_conditional + expand_to(jnp.asarray(w, jnp.float32), base_conditional) * jnp.asarray(guide_output)


def lora_merge(base_params, factors, scale: float = 1.0):
    """Kernels W + scale * A @ B for every kernel that has factors (A `[d_in, r]`, B `[r, d_out]`, B zero at the
    start so the merged model is the base exactly); `factors` maps a path (tuple of keys, as `jax.tree_util`
    flattens the state) to (A, B). Everything else is the base unchanged (Hu et al. 2022, LoRA)."""
    flat = dict(jax.tree_util.tree_flatten_with_path(base_params)[0])
    treedef = jax.tree_util.tree_structure(base_params)
    merged = []
    for path, value in flat.items():
        key = tuple(_key_name(entry) for entry in path)
        if key in factors:
            a, b = factors[key]
            value = value + scale * (jnp.asarray(a) @ jnp.asarray(b)).astype(value.dtype)
        merged.append(value)
    return jax.tree_util.tree_unflatten(treedef, merged)


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)

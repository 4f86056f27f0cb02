"""Denoisers built around a frozen teacher: LoRA and plug-and-play for guidance distillation (`guidance.py`), and the
per-step parameters of a distilled ODE solver (`solvers.py`, D-ODE).

Both are called like every denoiser, `model(x, t, labels=None, guidance_scale=None) -> raw`, and pass through the
attributes samplers read (`schedule`, `num_classes`, `null_label`, `sample_shape`, `guidance_conditioning`). Which
parameters train is the recipe's business (`trainable_mask`): the base's stay the teacher's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.methods.guidance import plug_and_play_output
from jdistill.nn.params import param


def path_name(path) -> str:
    """A parameter path as "a/b/0/kernel" (the trailing `value` attribute of a Variable dropped)."""
    names = [str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))) for entry in path]
    return "/".join(names[:-1] if names and names[-1] == "value" else names)


class _Wrapped(nnx.Module):
    """Pass-through of the base denoiser's sampling attributes."""

    base: Any

    @property
    def schedule(self):
        return self.base.schedule

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def null_label(self) -> int:
        return self.base.null_label

    @property
    def sample_shape(self):
        return self.base.sample_shape


class LoRADenoiser(_Wrapped):
    """The base denoiser with every 2-D kernel W replaced by W + (alpha / r) A B (Hu et al. 2022), A `[d_in, r]`
    random, B `[r, d_out]` zero (so it starts as the base exactly)."""

    def __init__(self, base, *, rank: int = 4, alpha: float = 4.0, rngs: nnx.Rngs):
        self.base = base
        self.scale = alpha / rank
        self.guidance_conditioning = base.guidance_conditioning
        kernels = [
            (path_name(path), value.shape)
            for path, value in jax.tree_util.tree_flatten_with_path(nnx.state(base, nnx.Param))[0]
            if path_name(path).endswith("kernel") and value.ndim == 2
        ]
        self.paths = tuple(name for name, _ in kernels)
        # Logical axes: the factors' outer dimensions as the model width, the rank replicated.
        self.lora_a = nnx.List(
            [
                param(jax.random.normal(rngs.params(), (d_in, rank)) / math.sqrt(d_in), ("embed", "projection"))
                for _, (d_in, _) in kernels
            ]
        )
        self.lora_b = nnx.List([param(jnp.zeros((rank, d_out)), ("projection", "embed")) for _, (_, d_out) in kernels])

    def __call__(self, x, t, labels=None, guidance_scale=None):
        graphdef, state = nnx.split(self.base)
        index = {name: i for i, name in enumerate(self.paths)}

        def add(path, value):
            i = index.get(path_name(path))
            if i is None:
                return value
            return value + (self.scale * self.lora_a[i][...] @ self.lora_b[i][...]).astype(value.dtype)

        merged = jax.tree_util.tree_map_with_path(add, state)
        return nnx.merge(graphdef, merged)(x, t, labels, guidance_scale)


class PlugAndPlayDenoiser(_Wrapped):
    """raw = base(x, t, c) + w guide(x, t, c, 1 + w), w = guidance_scale - 1 (`guidance.plug_and_play_output`): the
    frozen base's conditional output plus a light guide model's guidance direction. The guide takes the scale as an
    input and starts at zero output, so the model starts as the conditional teacher."""

    def __init__(self, base, guide):
        self.base = base
        self.guide = guide
        self.guidance_conditioning = True

    def __call__(self, x, t, labels=None, guidance_scale=None):
        raw = self.base(x, t, labels)
        if guidance_scale is None:
            return raw
        scale = jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), x.shape[:1])
        return plug_and_play_output(raw, self.guide(x, t, labels, scale), scale - 1.0).astype(raw.dtype)


class DODEDenoiser(_Wrapped):
    """The base denoiser unchanged, plus D-ODE's `lambdas [steps]` (zero: the base solver), which
    `solvers.dode_sample` uses on the `steps`-step grid."""

    def __init__(self, base, steps: int):
        self.base = base
        self.guidance_conditioning = base.guidance_conditioning
        self.lambdas = param(jnp.zeros((steps,)), ("layers",))  # a per-step table, replicated

    def __call__(self, x, t, labels=None, guidance_scale=None):
        return self.base(x, t, labels, guidance_scale)

"""A random-init MLP teacher standing in for a trained diffusion teacher run, so the recipes' steps are tested fast."""

import types

import jax
from flax import nnx

from jdistill.diffusion.denoisers import MLPDenoiser
from jdistill.diffusion.load import TrainedDenoiser
from jdistill.recipes import diffusion_distill_base as base

BATCH = 8


def install(monkeypatch, schedule, *, hidden=16, seed=0, data="8gaussians"):
    """Make `teacher_run="fake"` resolve to a random MLP denoiser of `schedule` (2-D data, unconditional)."""
    model = MLPDenoiser(schedule, hidden=hidden, num_layers=1, rngs=nnx.Rngs(seed))
    # A nonzero output layer, so the teacher is not the zero function.
    model.out.kernel.value = 0.3 * nnx.Rngs(seed + 1).params.normal(model.out.kernel.value.shape)
    config = types.SimpleNamespace(distill=types.SimpleNamespace(options={"data": data}))
    teacher = TrainedDenoiser(model, schedule, config, 0)
    monkeypatch.setattr(base, "trained_teacher", lambda run_dir: teacher)
    monkeypatch.setattr(base, "_teacher_graphdef", lambda run_dir: nnx.split(teacher.model)[0])
    return teacher


def student_of(recipe, hidden=16, seed=3):
    """A student built by the recipe (a 2-D MLP of width `hidden`) with the recipe's initial params and state."""
    model_config = types.SimpleNamespace(d_model=hidden, num_layers=1)
    student = recipe.wraps_student()(model_config, nnx.Rngs(seed))
    graphdef, params = nnx.split(student)
    params, state = recipe.init(params, None, jax.random.key(seed))
    return graphdef, params, state


def batch(epoch=0.0):
    import jax.numpy as jnp

    return {"inputs": jnp.zeros((BATCH, 2)), "epoch": jnp.float32(epoch)}

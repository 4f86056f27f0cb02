"""Random-init teachers standing in for a trained diffusion teacher run, so the recipes' steps are tested fast: a
2-D MLP (unconditional) or a one-block DiT over 8x8 digits (class-conditional)."""

import types

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.diffusion.denoisers import DiT, MLPDenoiser
from jdistill.diffusion.load import TrainedDenoiser
from jdistill.models.config import ModelConfig
from jdistill.recipes import diffusion_distill_base as base

BATCH = 8
DIT = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, patch_size=4, num_classes=10)


def install(monkeypatch, schedule, *, hidden=16, seed=0, images=False):
    """Make `teacher_run="fake"` resolve to a random denoiser of `schedule`: the 2-D MLP, or the DiT (`images`)."""
    if images:
        model = DiT(DIT, schedule, rngs=nnx.Rngs(seed))
    else:
        model = MLPDenoiser(schedule, hidden=hidden, num_layers=1, rngs=nnx.Rngs(seed))
    # Every parameter perturbed, so the zero-initialised layers (output, adaLN-Zero modulation) take part as in a
    # trained teacher.
    nnx.update(model, _perturbed(nnx.state(model, nnx.Param), jax.random.key(seed + 1)))
    data = "images" if images else "8gaussians"
    config = types.SimpleNamespace(distill=types.SimpleNamespace(options={"data": data}))
    teacher = TrainedDenoiser(model, schedule, config, 0)
    monkeypatch.setattr(base, "trained_teacher", lambda run_dir: teacher)
    monkeypatch.setattr(base, "_teacher_graphdef", lambda run_dir: nnx.split(teacher.model)[0])
    return teacher


@jax.jit
def _perturbed(state, key):
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def student_of(recipe, hidden=16, seed=3, images=False):
    """A student built by the recipe (the DiT config, or a 2-D MLP of width `hidden`) with the recipe's initial
    params and state."""
    model_config = DIT if images else types.SimpleNamespace(d_model=hidden, num_layers=1)
    student = recipe.wraps_student()(model_config, nnx.Rngs(seed))
    graphdef, params = nnx.split(student)
    params, state = recipe.init(params, None, jax.random.key(seed))
    return graphdef, params, state


def batch(epoch=0.0, images=False):
    if images:
        inputs = jax.random.uniform(jax.random.key(5), (BATCH, 8, 8, 1))
        return {"inputs": inputs, "labels": jnp.arange(BATCH) % 10, "epoch": jnp.float32(epoch)}
    return {"inputs": jnp.zeros((BATCH, 2)), "epoch": jnp.float32(epoch)}

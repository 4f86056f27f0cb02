"""Shared fixtures for the DINO / random-teacher / mutual / ADR / DCS / SLA-SD recipe tests: a tiny classifier,
random digit-shaped batches, a train state prepared by a recipe's `init`, and tiny job overrides for presets."""

import jax
import numpy as np
from flax import nnx

from jdistill.configs import TrainConfig
from jdistill.models import ModelConfig, Transformer
from jdistill.train.optim import make_optimizer
from jdistill.train.state import TrainState

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
TRAIN = TrainConfig(steps=10, warmup_steps=1, learning_rate=1e-2)
# The student's learning rate in the end-to-end tests: a few dozen steps move it well off its initialisation.
FAST = ["student.train.learning_rate=0.01"]


def batch(seed=0, size=8, num_examples=None):
    """A classification batch of `size` random 8x8x1 images in [0, 1] with labels (and `index` when asked)."""
    rng = np.random.default_rng(seed)
    out = {"inputs": rng.random((size, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, size).astype(np.int32)}
    if num_examples is not None:
        out["index"] = rng.choice(num_examples, size, replace=False).astype(np.int32)
    return out


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def prepared_state(recipe, module, teacher_params=None, *, train=TRAIN, seed=0, optimizer=None):
    """(graphdef, TrainState, optimizer) with the recipe's `init` applied, as `run_stage` does; the optimizer is
    `train`'s AdamW unless given."""
    optimizer = optimizer or make_optimizer(train)
    graphdef, params = nnx.split(module)
    params, recipe_state = recipe.init(params, teacher_params, jax.random.key(seed))
    state = TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=optimizer.init(params),
        recipe_state=recipe_state,
    )
    return graphdef, state, optimizer


def tiny_model(seed=0, config=CONFIG):
    return Transformer(config, rngs=nnx.Rngs(params=seed))


def tiny_job(stages=("student",), steps=4, extra=()):
    """Overrides that shrink a preset's `stages` to a few-second job (no baseline, no plot)."""
    out = [
        "data.eval_batch_size=128",
        "run.progress=false",
        "run.plot=false",
        "run.tensorboard=false",
        "run.baseline=false",
    ]
    for stage in stages:
        out += [
            f"{stage}.model.d_model=16",
            f"{stage}.model.num_heads=2",
            f"{stage}.model.mlp_dim=32",
            f"{stage}.model.num_layers=1",
            f"{stage}.train.steps={steps}",
            f"{stage}.train.warmup_steps=1",
            f"{stage}.train.eval_every={steps}",
            f"{stage}.train.log_every=2",
            f"{stage}.train.checkpoint_every={steps}",
            f"{stage}.train.batch_size=16",
        ]
    return out + list(extra)

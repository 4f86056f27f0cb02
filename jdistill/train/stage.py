"""One stage's compiled world, built once for training (`run_stage`) and for ahead-of-time compilation
(`jdistill compile`): the recipe bound to the stage, the student and its `TrainState` (recipe `init` included),
the teacher, the mesh, every sharding and the jitted train step. What compiles is what trains.

    stage = build_stage(stage_config, recipe=..., facts=stage_facts(...), batch=abstract_batch(...), ...)
    stage.train_step(stage.state, stage.teacher_params, batch)

With `abstract=True` nothing is allocated: the state and the teacher are `jax.ShapeDtypeStruct` trees (shapes
traced with `jax.eval_shape`), ready for `stage.train_step.lower(*stage.step_args(batch))`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.configs.schema import MeshConfig
from jdistill.models import Transformer, count_params
from jdistill.recipes.base import RunFacts
from jdistill.train import inputs, sharding
from jdistill.train.optim import make_optimizer
from jdistill.train.state import TrainState
from jdistill.train.step import StepShardings, make_train_step

PURPOSE_RECIPE_INIT = 7


@dataclasses.dataclass
class Stage:
    """A built stage. `state` and `teacher_params` are sharded arrays, or abstract ones (`abstract=True`)."""

    recipe: Any
    graphdef: Any
    state: TrainState
    teacher_graphdef: Any
    teacher_params: Any
    mesh: jax.sharding.Mesh
    shardings: StepShardings
    train_step: Any
    params_count: int

    def step_args(self, batch):
        """The train step's arguments for `batch` (real or abstract)."""
        return self.state, self.teacher_params, batch


def build_student(stage_config, recipe, init_key):
    """The module a stage trains: the config's transformer, or the recipe's wrapper around it (peer students)."""
    rngs = nnx.Rngs(params=init_key)
    factory = recipe.wraps_student()
    return factory(stage_config.model, rngs) if factory is not None else Transformer(stage_config.model, rngs=rngs)


def stage_facts(stage_config, data_config, *, num_examples: int | None = None):
    """The `RunFacts` a recipe is bound with: step budget, training-split size and steps per epoch. The split's
    size is read from the data unless given (`jdistill compile` may run where the data is not)."""
    train = stage_config.train
    if num_examples is None:
        num_examples = inputs.train_examples(data_config, stage_config.model.kind)
    return RunFacts(
        total_steps=train.steps,
        steps_per_epoch=max(num_examples / train.batch_size, 1e-9),
        num_examples=num_examples,
        batch_size=train.batch_size,
        weight_decay=train.weight_decay,
    )


def _initial_state(stage_config, recipe, optimizer, init_key, teacher_params, *, load_init: bool = False):
    """(graphdef, TrainState): the student at its initialisation (with `load_init`, the weights of
    `student.init_from` when set), then the recipe's `init`, then the optimizer."""
    student = build_student(stage_config, recipe, init_key)
    if load_init and stage_config.init_from:
        from jdistill.hf.init_from import initialise_student

        initialise_student(student, stage_config)
    graphdef, params = nnx.split(student)
    params, recipe_state = recipe.init(params, teacher_params, jax.random.fold_in(init_key, PURPOSE_RECIPE_INIT))
    return graphdef, TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), recipe_state=recipe_state
    )


def abstract_teacher(model_config):
    """(graphdef, abstract params) of a Transformer of `model_config`: shapes and dtypes, nothing allocated."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0))))


def build_stage(
    stage_config,
    *,
    recipe,
    facts,
    batch,
    seed: int,
    init_key,
    mesh_config=None,
    devices=None,
    teacher_graphdef=None,
    teacher_params=None,
    abstract: bool = False,
) -> Stage:
    """Bind the recipe, initialise (or trace) the state, shard it and build the jitted step.

    `batch`: one training batch or its abstract form (`jdistill.train.batch_spec.abstract_batch`); it fixes the
    batch shardings. `teacher_*`: the separate teacher (real, or abstract with `abstract=True`), else None.
    `devices`: the mesh's devices (default: all of this process's view).
    """
    recipe = recipe.bind(facts)
    optimizer = make_optimizer(stage_config.train)
    student = nnx.eval_shape(lambda: build_student(stage_config, recipe, init_key))
    params_count = count_params(student)
    if abstract:
        graphdef = nnx.graphdef(student)
        state = jax.eval_shape(
            lambda key, teacher: _initial_state(stage_config, recipe, optimizer, key, teacher)[1],
            init_key,
            teacher_params,
        )
    else:
        graphdef, state = _initial_state(stage_config, recipe, optimizer, init_key, teacher_params, load_init=True)
    mesh_config = mesh_config or MeshConfig()
    mesh = sharding.make_mesh(mesh_config, devices)
    rules = sharding.resolve_rules(mesh_config.rules)
    state_shardings = sharding.state_shardings(state, mesh, rules)
    teacher_shardings = None
    if teacher_params is not None:
        teacher_shardings = sharding.param_shardings(teacher_params, mesh, rules)
    if not abstract:
        state = sharding.shard(state, state_shardings)
        if teacher_params is not None:
            teacher_params = sharding.shard(teacher_params, teacher_shardings)
    shardings = StepShardings(
        state_shardings,
        teacher_shardings,
        sharding.batch_shardings(batch, mesh, rules),
        sharding.replicated(mesh),
        rules,
    )
    train_step = make_train_step(
        graphdef,
        recipe,
        optimizer,
        seed=seed,
        teacher_graphdef=teacher_graphdef,
        grad_accum_steps=stage_config.train.grad_accum_steps,
        shardings=shardings,
        steps_per_epoch=facts.steps_per_epoch,
    )
    return Stage(recipe, graphdef, state, teacher_graphdef, teacher_params, mesh, shardings, train_step, params_count)

"""The training state: everything a step reads and writes (the student only; never the teacher)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """`step` (int32 scalar), student `params` (nnx.State), optax `opt_state`, `recipe_state` (pytree)."""

    step: jax.Array
    params: Any
    opt_state: Any
    recipe_state: Any = ()


def create_train_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, recipe_state: Any = ()
) -> tuple[nnx.GraphDef, TrainState]:
    """Split the model once; the graph definition is static, the state is what the jitted step carries."""
    graphdef, params = nnx.split(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), recipe_state=recipe_state
    )
    return graphdef, state

"""The generic, pure train step and the evaluation step.

`train_step(state, teacher_params, batch) -> (state, metrics)`: the teacher (if the recipe has one) runs
inside the same jitted function under `stop_gradient`; its parameters are a separate, non-donated argument
and never reach the optimizer. The student state is donated. Randomness: `fold_in(fold_in(seed, purpose), step)`.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from jdistill.eval.metrics import prediction_stats
from jdistill.recipes.base import targets_and_mask
from jdistill.train.state import TrainState

PURPOSE_STEP_RNG = 1


def step_rng(seed: int, step):
    """The key for a step: derived from the config seed and the step, so a resumed run sees the same keys."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), PURPOSE_STEP_RNG), step)


def make_train_step(graphdef, recipe, optimizer, *, seed: int, teacher_graphdef=None):
    """Build the jitted `train_step(state, teacher_params, batch) -> (state, metrics)`."""

    def train_step(state: TrainState, teacher_params, batch):
        rng = step_rng(seed, state.step)
        teacher_output = None
        if teacher_graphdef is not None:
            teacher = nnx.merge(teacher_graphdef, teacher_params)
            teacher_output = jax.lax.stop_gradient(teacher(batch["inputs"]))

        def loss_fn(params):
            student = nnx.merge(graphdef, params)
            output = student(batch["inputs"])
            loss, metrics, recipe_state = recipe.loss(output, teacher_output, state.recipe_state, batch, rng)
            return loss, (metrics, recipe_state)

        (_, (metrics, recipe_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, recipe_state=recipe_state)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(graphdef):
    """Jitted `eval_step(params, batch) -> summed prediction stats` (see `jdistill.eval.metrics`)."""

    def eval_step(params, batch):
        model = nnx.merge(graphdef, params)
        labels, mask = targets_and_mask(batch)
        return prediction_stats(model(batch["inputs"]).logits, labels, mask)

    return jax.jit(eval_step)

"""The generic, pure train step and the evaluation step.

`train_step(state, teacher_params, batch) -> (state, metrics)` is one jitted function for every recipe: the
teacher (when the recipe's policy runs a module in the step) runs inside it under `stop_gradient` with the
parameters the recipe selects; its parameters are a separate, non-donated argument and never reach the optimizer.
The student state is donated. With `grad_accum_steps = A` the batch is split into A micro-batches scanned in
sequence, all reading the same recipe state; losses given as `(sum, count)` are normalised once by the global
count, and the recipe's per-example statistics are concatenated over the micro-batches, so the recipe state is
updated once per optimizer step from the whole batch (`recipe.update_state`), as without accumulation.
Randomness: `fold_in(fold_in(seed, purpose), step)`, folded with the micro-batch index under accumulation.
The metrics carry `finite`: the loss and the global gradient norm are finite. When they are not, the step keeps
the previous parameters, optimizer and recipe state (only `step` advances), so a bad batch never poisons the state;
the loop (`jdistill.train.nonfinite`) then halts the stage or counts the step as skipped.
With `shardings` the step is jitted with explicit in/out shardings (see `jdistill.train.sharding`).

Two networks (`recipe.second_network()`, `jdistill.recipes.base.SecondNetwork`): before the student's loss the step
makes `updates_per_step` updates of the second network (its parameters and optimizer state in
`recipe_state[name]`), each one a gradient step of its own loss on the whole batch with the student held fixed,
keyed by `fold_in(fold_in(seed, PURPOSE_SECOND_NETWORK), step)` folded with the update's index (so the student's
keys are those of the single-network step); the student's loss then reads the updated recipe state. The step is
finite only if every update was: otherwise both networks keep their previous state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import prediction_stats
from jdistill.partitioning import DEFAULT_RULES, axis_rules
from jdistill.train.state import TrainState

PURPOSE_STEP_RNG = 1
PURPOSE_SECOND_NETWORK = 2


class StepShardings(NamedTuple):
    """Explicit shardings of the step's arguments: the TrainState tree, the teacher params, the batch dict."""

    state: Any  # a TrainState-shaped tree of NamedSharding
    teacher: Any  # the teacher params' tree of NamedSharding, or None without a teacher
    batch: Any  # the batch dict's tree of NamedSharding
    replicated: NamedSharding
    # the logical -> mesh axes table the shardings were made with (None: the defaults)
    rules: Mapping[str, Any] | None = None


def step_rng(seed: int, step):
    """The key for a step: derived from the config seed and the step, so a resumed run sees the same keys."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), PURPOSE_STEP_RNG), step)


def as_sum_count(loss):
    """A recipe loss as (sum, count): a scalar mean counts as one unit."""
    if isinstance(loss, tuple):
        return loss[0].astype(jnp.float32), jnp.asarray(loss[1], jnp.float32)
    return loss.astype(jnp.float32), jnp.ones((), jnp.float32)


def keep_if_not(finite, updated, previous):
    """`updated` where `finite` (a traced scalar bool) holds, else `previous`, leaf by leaf (same structure)."""
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, previous)


def split_micro_batches(batch: dict, count: int) -> dict:
    """[batch, ...] -> [count, batch // count, ...] for every per-example leaf."""
    return jax.tree.map(lambda x: x.reshape(count, x.shape[0] // count, *x.shape[1:]), batch)


def teacher_module(graphdef, recipe, teacher_graphdef, recipe_state, teacher_params):
    """The teacher module of this step (the recipe selects its parameters, held fixed), or None."""
    selected = recipe.teacher_params(recipe_state, teacher_params)
    if selected is not None and recipe.policy.module_in_step:
        return nnx.merge(teacher_graphdef or graphdef, jax.lax.stop_gradient(selected))
    return None


def make_loss_and_grad(graphdef, recipe, teacher_graphdef):
    """`(params, recipe_state, teacher_params, batch, rng) -> ((sum, count), metrics, statistics, grad of sum)`:
    `statistics` the recipe's per-example pytree for `recipe.update_state` (the state itself is not changed)."""

    def loss_and_grad(params, recipe_state, teacher_params, batch, rng):
        teacher = teacher_module(graphdef, recipe, teacher_graphdef, recipe_state, teacher_params)

        def loss_fn(params):
            student = nnx.merge(graphdef, recipe.forward_params(params))
            loss, metrics, statistics = recipe.loss(student, teacher, recipe_state, batch, rng)
            total, count = as_sum_count(loss)
            return total, (count, metrics, statistics)

        (total, (count, metrics, statistics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return (total, count), metrics, statistics, grads

    return loss_and_grad


def make_second_network_update(graphdef, recipe, teacher_graphdef, network):
    """`(params, recipe_state, teacher_params, batch, rng) -> (recipe_state, metrics, finite)`: `updates_per_step`
    optimizer steps of the second network `network` (`jdistill.recipes.base.SecondNetwork`) with the student's
    `params` held fixed; a non-finite update leaves the network's slot as it was."""

    def update(params, recipe_state, teacher_params, batch, rng):
        teacher = teacher_module(graphdef, recipe, teacher_graphdef, recipe_state, teacher_params)
        student = nnx.merge(graphdef, jax.lax.stop_gradient(recipe.forward_params(params)))

        def one(slot, index):
            def loss_fn(net_params):
                loss, metrics = network.loss(
                    net_params, student, teacher, recipe_state, batch, jax.random.fold_in(rng, index)
                )
                return jnp.asarray(loss, jnp.float32), metrics

            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(slot["params"])
            updates, opt_state = network.optimizer.update(grads, slot["opt_state"], slot["params"])
            updated = {"params": optax.apply_updates(slot["params"], updates), "opt_state": opt_state}
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            return keep_if_not(finite, updated, slot), (loss, grad_norm, finite, metrics)

        slot, (losses, grad_norms, finite, metrics) = jax.lax.scan(
            one, recipe_state[network.name], jnp.arange(network.updates_per_step)
        )
        name = network.name
        metrics = {f"{name}_{key}": jnp.mean(value) for key, value in metrics.items()}
        metrics.update({f"{name}_loss": jnp.mean(losses), f"{name}_grad_norm": jnp.mean(grad_norms)})
        return dict(recipe_state, **{name: slot}), metrics, jnp.all(finite)

    return update


def make_train_step(
    graphdef,
    recipe,
    optimizer,
    *,
    seed: int,
    teacher_graphdef=None,
    grad_accum_steps: int = 1,
    steps_per_epoch: float | None = None,
    shardings: StepShardings | None = None,
):
    """Build the jitted `train_step(state, teacher_params, batch) -> (state, metrics)`."""
    loss_and_grad = make_loss_and_grad(graphdef, recipe, teacher_graphdef)
    network = getattr(recipe, "second_network", lambda: None)()
    if network is not None:
        update_network = make_second_network_update(graphdef, recipe, teacher_graphdef, network)

    def train_step(state: TrainState, teacher_params, batch):
        rng = step_rng(seed, state.step)
        epoch = jnp.asarray(state.step, jnp.float32) / steps_per_epoch if steps_per_epoch else jnp.zeros(())
        recipe_state_in, network_metrics, network_finite = state.recipe_state, {}, jnp.ones((), bool)
        if network is not None:
            network_rng = jax.random.fold_in(
                jax.random.fold_in(jax.random.key(seed), PURPOSE_SECOND_NETWORK), state.step
            )
            recipe_state_in, network_metrics, network_finite = update_network(
                state.params, state.recipe_state, teacher_params, dict(batch, epoch=epoch), network_rng
            )
            network_metrics[f"finite_{network.name}"] = network_finite
        if grad_accum_steps == 1:
            (total, count), metrics, statistics, grads = loss_and_grad(
                state.params, recipe_state_in, teacher_params, dict(batch, epoch=epoch), rng
            )
        else:
            total, count, metrics, statistics, grads = _accumulate(
                loss_and_grad,
                TrainState(state.step, state.params, state.opt_state, recipe_state_in),
                teacher_params,
                batch,
                epoch,
                rng,
                grad_accum_steps,
            )
        recipe_state = recipe.update_state(recipe_state_in, statistics)  # once per step, from the whole batch
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        recipe_state = recipe.after_update(recipe_state, params, state.step + 1)
        loss, grad_norm = total / jnp.maximum(count, 1.0), optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if network is not None:
            finite = finite & network_finite
        # a non-finite step changes nothing but the step counter (docs/reliability.md): the loop halts or skips it
        params, opt_state, recipe_state = keep_if_not(
            finite, (params, opt_state, recipe_state), (state.params, state.opt_state, state.recipe_state)
        )
        metrics = dict(metrics, **network_metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, recipe_state=recipe_state)
        return new_state, metrics

    if shardings is None:
        return jax.jit(train_step, donate_argnums=(0,))
    abstract_mesh = shardings.replicated.mesh.abstract_mesh

    def train_step_on_mesh(state, teacher_params, batch):
        # layers constrain activations and kernels split per shard by the same rules as the step's shardings
        with jax.sharding.use_abstract_mesh(abstract_mesh), axis_rules(shardings.rules or DEFAULT_RULES):
            return train_step(state, teacher_params, batch)

    return jax.jit(
        train_step_on_mesh,
        donate_argnums=(0,),
        in_shardings=(shardings.state, shardings.teacher, shardings.batch),
        out_shardings=(shardings.state, shardings.replicated),
    )


def _accumulate(loss_and_grad, state, teacher_params, batch, epoch, rng, count_micro: int):
    """Scan the micro-batches, adding gradient sums, loss sums and counts; metrics are averaged; the recipe's
    per-example statistics are concatenated back into the whole batch's order."""
    micro_batches = split_micro_batches(batch, count_micro)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

    def body(carry, xs):
        grads, total, count, metric_sums = carry
        index, micro = xs
        micro = dict(micro, epoch=epoch)
        (t, c), metrics, statistics, g = loss_and_grad(
            state.params, state.recipe_state, teacher_params, micro, jax.random.fold_in(rng, index)
        )
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        metric_sums = jax.tree.map(lambda a, b: a + b / count_micro, metric_sums, metrics)
        return (grads, total + t, count + c, metric_sums), statistics

    first = dict(jax.tree.map(lambda x: x[0], micro_batches), epoch=epoch)
    metric_shapes, statistic_shapes = jax.eval_shape(
        lambda: loss_and_grad(state.params, state.recipe_state, teacher_params, first, rng)[1:3]
    )
    for leaf in jax.tree.leaves(statistic_shapes):
        if not leaf.shape:
            raise ValueError(
                "recipe statistics must be per-example arrays (a leading batch axis) to be "
                "concatenated over micro-batches; got a scalar"
            )
    metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), metric_zeros)
    (grads, total, count, metrics), statistics = jax.lax.scan(body, init, (jnp.arange(count_micro), micro_batches))
    statistics = jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), statistics)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    return total, count, metrics, statistics, grads


def make_eval_step(graphdef, forward_params=None, stats=None):
    """Jitted `eval_step(params, batch) -> summed prediction stats` (see `jdistill.eval.metrics`); the model runs
    with `forward_params(params)` when given (the recipe's deployed weights, e.g. quantised). `stats(model, batch)`:
    the recipe's own sums instead (`RecipeBase.eval_stats`)."""

    def eval_step(params, batch):
        model = nnx.merge(graphdef, params if forward_params is None else forward_params(params))
        if stats is not None:
            return stats(model, batch)
        labels, mask = targets_and_mask(batch)
        return prediction_stats(model(batch["inputs"], **lm_kwargs(batch)).logits, labels, mask)

    return jax.jit(eval_step)

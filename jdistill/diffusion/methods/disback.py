"""Distribution Backtracking (DisBack; Zhang et al. 2024, "Distribution Backtracking Builds A Faster Convergence
Trajectory for Diffusion Distillation"): the pure parts (docs/diffusion_generators.md).

Score distillation starts with a large mismatch: the generator's samples lie far from where the teacher's score is
accurate. DisBack first records the *degradation path* from the teacher to the initial generator -- a copy of the
teacher s_0 is fine-tuned by denoising on the initial generator's samples, its weights saved at N points along the
way, s_1 ... s_N (s_N fits the initial generator) -- and then distils the generator against the path walked
backwards: the "real" score of the distillation loss is s_{N-1}, then s_{N-2}, ..., finally s_0, the teacher
(the intermediate distributions are each close to the generator's current one, so the score difference is accurate).
Here the path is walked on a fixed schedule: equal numbers of steps per checkpoint over the first `fraction` of the
training (the paper switches when the loss stops falling), then the teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import Array


def backtrack_index(step: Array, total_steps: int, checkpoints: int, fraction: float) -> Array:
    """The path checkpoint that serves as the real score at training step `step`: N - 1 - floor(step / segment) with
    segment = fraction total / N, down to 0 (the teacher) from step fraction x total on."""
    segment = max(fraction * total_steps / checkpoints, 1e-9)
    index = checkpoints - 1 - jnp.floor(jnp.asarray(step, jnp.float32) / segment).astype(jnp.int32)
    return jnp.clip(index, 0, checkpoints - 1)


def record_degradation(
    loss_fn: Callable[[object, Array], Array], params, optimizer: optax.GradientTransformation, steps: int,
    checkpoints: int, rng,
):  # fmt: skip
    """The degradation path: `params` (s_0) and the parameters after each of `checkpoints` equal segments of `steps`
    optimizer steps of `loss_fn(params, rng)`, stacked on a leading axis `[checkpoints + 1, ...]`."""
    per_segment = max(steps // checkpoints, 1)

    def one(carry, key):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def segment(carry, key):
        carry, _ = jax.lax.scan(one, carry, jax.random.split(key, per_segment))
        return carry, carry[0]

    _, saved = jax.lax.scan(segment, (params, optimizer.init(params)), jax.random.split(rng, checkpoints))
    return jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), params, saved)

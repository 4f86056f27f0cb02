"""Adversarial examples in an L-infinity ball: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

    x_0 = x + U(-eps, eps)  (PGD random start; FGSM starts at x)
    x_{k+1} = clip_[x - eps, x + eps](x_k + step_size * sign(grad_x L(f(x_k), y)))   (then into [lo, hi])

`targets` are integer labels or soft label distributions (ADR attacks towards its rectified labels). Pure:
`model_fn(inputs) -> logits`; the returned examples carry no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attack_loss(logits, targets):
    """Mean cross-entropy against integer labels or soft targets (the quantity the attack increases)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if targets.ndim == logits.ndim:
        return -(targets * log_probs).sum(-1).mean()
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1).mean()


def pgd_attack(
    model_fn,
    inputs,
    targets,
    rng=None,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    clip_min: float | None = None,
    clip_max: float | None = None,
):
    """PGD-`steps` examples within `epsilon` of `inputs` (L-inf), maximising `attack_loss`."""
    inputs = jax.lax.stop_gradient(inputs)
    x = inputs
    if random_start:
        x = x + jax.random.uniform(rng, x.shape, x.dtype, -epsilon, epsilon)
    grad = jax.grad(lambda x: attack_loss(model_fn(x), targets))

    def project(x):
        x = jnp.clip(x, inputs - epsilon, inputs + epsilon)
        if clip_min is not None or clip_max is not None:
            x = jnp.clip(x, clip_min, clip_max)
        return x

    x = project(x)
    x = jax.lax.fori_loop(0, steps, lambda _, x: project(x + step_size * jnp.sign(grad(x))), x)
    return jax.lax.stop_gradient(x)


def robust_accuracy(
    model_fn,
    batches,
    rng,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    clip_min=None,
    clip_max=None,
    random_start: bool = True,
) -> float:
    """Accuracy on PGD examples over evaluation batches (`labels`, optional `mask` of valid rows); FGSM is
    `steps=1, step_size=epsilon, random_start=False`."""
    attack = jax.jit(
        lambda x, y, key: pgd_attack(
            model_fn,
            x,
            y,
            key,
            epsilon=epsilon,
            step_size=step_size,
            steps=steps,
            random_start=random_start,
            clip_min=clip_min,
            clip_max=clip_max,
        )
    )
    correct, total = 0.0, 0.0
    for index, batch in enumerate(batches):
        adversarial = attack(batch["inputs"], batch["labels"], jax.random.fold_in(rng, index))
        hits = jnp.argmax(model_fn(adversarial), -1) == batch["labels"]
        valid = batch.get("mask", jnp.ones_like(hits))
        correct += float((hits * valid).sum())
        total += float(valid.sum())
    return correct / max(total, 1.0)

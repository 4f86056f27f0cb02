"""A softmax linear head on frozen features, fitted full-batch: the `label-noise-xi` claim's linear setting.

Das & Sanghavi 2023 analyse self-distillation with a regularised linear model on fixed features; this is that
model. The head (W, b) minimises

    L(W, b) = (1 / n) sum_i CE(tau_i, softmax(W x_i + b)) + (l2 / 2) ||W||^2,
    tau_i = xi * softmax(teacher_logits_i) + (1 - xi) * onehot(y_i)

(`losses.xi_self_distillation` at T = 1; xi = 0 is the teacher: plain L2 logistic regression on the labels). The
bias is not penalised. With xi > 1 tau has a negative entry and L is not convex, but the L2 term keeps it bounded
below. Fitted with L-BFGS from zero for a fixed number of iterations (one `jax.jit`: same answer on every run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdistill.losses import xi_self_distillation


def standardise(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every array minus the training mean, over the training standard deviation (features with none left as 0)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return tuple((a - mean) / std for a in (train, *others))


def head_loss(params, features, labels, teacher_logits, xi, l2):
    """L(W, b) above for `params = (W [d, K], b [K])`."""
    weights, bias = params
    logits = features @ weights + bias
    fit = xi_self_distillation(logits, teacher_logits, labels, xi=xi, reduction="mean")
    return fit + 0.5 * l2 * jnp.sum(weights**2)


def fit_head(features, labels, num_classes: int, *, xi: float, l2: float, teacher_logits=None, iterations: int = 300):
    """(W, b) minimising `head_loss` from zero; `teacher_logits` `[n, K]` needed when xi != 0."""
    features = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    if teacher_logits is None:
        if xi != 0:
            raise ValueError("fit_head: xi != 0 needs teacher_logits")
        teacher_logits = jnp.zeros((features.shape[0], num_classes), jnp.float32)
    teacher_logits = jnp.asarray(teacher_logits, jnp.float32)
    return _fit(features, labels, teacher_logits, float(xi), float(l2), num_classes, iterations)


@jax.jit(static_argnames=("num_classes", "iterations"))
def _fit(features, labels, teacher_logits, xi, l2, num_classes, iterations):
    loss = lambda p: head_loss(p, features, labels, teacher_logits, xi, l2)
    params = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros((num_classes,)))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=iterations)
    return params


def head_logits(params, features) -> np.ndarray:
    weights, bias = params
    return np.asarray(jnp.asarray(features, jnp.float32) @ weights + bias)


def xi_sweep_accuracies(
    train_x, noisy_y, test_x, test_y, num_classes: int, xis, *, l2: float, iterations: int = 300
) -> dict[float, float]:
    """Clean test accuracy of the student head for each xi: the teacher is the xi = 0 head on the noisy labels
    `noisy_y`; every student is fitted on the same features and labels with that teacher's logits."""
    teacher = fit_head(train_x, noisy_y, num_classes, xi=0.0, l2=l2, iterations=iterations)
    teacher_logits = head_logits(teacher, train_x)
    out = {}
    for xi in xis:
        head = fit_head(
            train_x, noisy_y, num_classes, xi=xi, l2=l2, teacher_logits=teacher_logits, iterations=iterations
        )
        out[xi] = float(np.mean(head_logits(head, test_x).argmax(-1) == np.asarray(test_y)))
    return out

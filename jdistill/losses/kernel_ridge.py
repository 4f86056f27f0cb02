"""Self-distillation in kernel-ridge form, in closed form (Borup & Andersen 2023, "Even your Teacher Needs
Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation"; docs/methods.md).

Kernel ridge regression with Gram matrix K `[n, n]` and ridge lam fits training targets z with coefficients
(K + lam I)^-1 z: its fitted values are A z, A = K (K + lam I)^-1 (`krr_operator`), and its predictions at query
points with kernel rows K_q `[m, n]` are B z, B = K_q (K + lam I)^-1 (`krr_query_operator`). Generation 1 fits the
labels y; generation tau fits alpha * y + (1 - alpha) * y_{tau-1} (its teacher's fitted values):

    y_1 = A y,   y_tau = A (alpha y + (1 - alpha) y_{tau-1})   ->   f_inf(x) = alpha k(x)^T (alpha K + lam I)^-1 y

(`self_distillation_iterates`, `self_distillation_limit`). A generation's predictions are affine in its alpha,
B y_{tau-1} + alpha B (y - y_{tau-1}), so the alpha minimising the squared error to target values is closed-form
(`best_ground_truth_weight`; `guided_generations` picks it every generation on validation data). The deep recipe
(`recipes.teacher_guidance`) uses the same line through two ridge probes on the teacher's features
(`probe_operator`, a linear kernel; `probe_alpha`).

Every function accepts numpy or jax arrays: all-numpy inputs are computed in numpy (float64 stays float64),
anything else in jax (jit-safe).
"""

from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from jdistill.losses._common import array_namespace


def krr_operator(K: ArrayLike, lam) -> ArrayLike:
    """Kernel ridge regression's hat matrix A = K (K + lam I)^-1 `[n, n]` (fitted values = A y).

    Borup & Andersen 2023, "Even your Teacher Needs Guidance: Ground-Truth Targets Dampen
    Regularization Imposed by Self-Distillation". `K` is the `[n, n]` Gram matrix, `lam` > 0.
    """
    xp = array_namespace(K)
    gram = xp.asarray(K)
    regularised = gram + lam * xp.eye(gram.shape[0], dtype=gram.dtype)
    return xp.linalg.solve(regularised.T, gram.T).T


def self_distillation_iterates(K: ArrayLike, y: ArrayLike, lam, alpha, steps: int) -> ArrayLike:
    """Fitted values of `steps` generations of self-distilled KRR, stacked `[steps, n, ...]`.

    Borup & Andersen 2023 (see `krr_operator`): y_1 = A y and
    y_tau = A (alpha * y + (1 - alpha) * y_{tau-1}), i.e. each generation is fitted to a mix of the
    ground truth (weight alpha) and the previous generation's predictions. alpha = 1 is plain KRR
    every step; alpha = 0 is pure self-distillation, A^tau y.
    """
    xp = array_namespace(K, y)
    A, y = krr_operator(K, lam), xp.asarray(y)
    iterates, current = [], y
    for _ in range(steps):
        current = A @ (alpha * y + (1 - alpha) * current)
        iterates.append(current)
    return xp.stack(iterates)


def self_distillation_limit(K_query: ArrayLike, K: ArrayLike, y: ArrayLike, lam, alpha) -> ArrayLike:
    """The limit of `self_distillation_iterates`, f_inf(x) = alpha * k(x)^T (alpha K + lam I)^-1 y.

    Borup & Andersen 2023: the fixed point of y = A (alpha y_0 + (1 - alpha) y) is KRR with the
    regularisation amplified from lam to lam / alpha. `K_query` `[m, n]` holds k(x) for m query points
    (pass `K` itself for the training points); 0 < alpha <= 1.
    """
    xp = array_namespace(K_query, K, y)
    gram = xp.asarray(K)
    regularised = alpha * gram + lam * xp.eye(gram.shape[0], dtype=gram.dtype)
    return alpha * (xp.asarray(K_query) @ xp.linalg.solve(regularised, xp.asarray(y)))


def best_ground_truth_weight(A: ArrayLike, y: ArrayLike, y_prev: ArrayLike, y_star: ArrayLike):
    """The alpha minimising ||y_tau(alpha) - y*||^2 for the next generation, in closed form.

    Borup & Andersen 2023: y_tau(alpha) = A y_prev + alpha A (y - y_prev) is affine in alpha, so
        alpha* = <A (y - y_prev), y* - A y_prev> / ||A (y - y_prev)||^2.
    `y_star` is the target the generation should approach (e.g. noise-free values or a validation
    fit). Where A (y - y_prev) = 0 every alpha gives the same fit and 1.0 (plain KRR) is returned.
    """
    xp = array_namespace(A, y, y_prev, y_star)
    A = xp.asarray(A)
    direction = A @ (xp.asarray(y) - xp.asarray(y_prev))
    residual = xp.asarray(y_star) - A @ xp.asarray(y_prev)
    numerator, denominator = xp.sum(direction * residual), xp.sum(direction * direction)
    positive = denominator > 0
    return xp.where(positive, numerator / xp.where(positive, denominator, 1.0), 1.0)


def krr_query_operator(K_query, K, lam):
    """B = K_query (K + lam I)^-1 `[m, n]`: kernel ridge predictions at m query points are B @ targets."""
    xp = array_namespace(K_query, K)
    K = xp.asarray(K)
    regularised = K + lam * xp.eye(K.shape[0], dtype=K.dtype)
    return xp.linalg.solve(regularised.T, xp.asarray(K_query).T).T


def probe_operator(features_fit, features_eval, lam):
    """B `[m, n]` of a ridge regression with intercept on features `[n, d]`, evaluated at features `[m, d]`:
    KRR with the linear kernel on [features, 1], i.e. eval_predictions = B @ fit_targets for any targets."""
    xp = array_namespace(features_fit, features_eval)
    fit, evaluate = (
        xp.concatenate([xp.asarray(f), xp.ones((f.shape[0], 1), f.dtype)], axis=1)
        for f in (features_fit, features_eval)
    )
    return krr_query_operator(evaluate @ fit.T, fit @ fit.T, lam)


def probe_alpha(features_fit, targets_fit, teacher_fit, features_eval, targets_eval, lam):
    """The ground-truth weight in [0, 1] whose probe fit to alpha * targets + (1 - alpha) * teacher best predicts
    `targets_eval` (squared error): the closed form on the line through the alpha = 0 and alpha = 1 probe fits."""
    B = probe_operator(features_fit, features_eval, lam)
    alpha = best_ground_truth_weight(B, targets_fit, teacher_fit, targets_eval)
    return array_namespace(B).clip(alpha, 0.0, 1.0)


def guided_generations(K, y, lam, steps: int, *, alpha=None, K_val=None, y_val=None):
    """`steps` generations of guided self-distilled KRR: (train fits `[steps, n, ...]`, alphas `[steps]`,
    validation predictions `[steps, m, ...]` or None when K_val `[m, n]` is not given).

    Generation 1 fits y (its alpha is 1). Later generations use the fixed `alpha`, or with alpha=None the alpha*
    minimising ||B (alpha y + (1 - alpha) y_prev) - y_val||^2, B = K_val (K + lam I)^-1 (unclipped, as in the
    paper's closed form).
    """
    if alpha is None and (K_val is None or y_val is None):
        raise ValueError("alpha=None chooses alpha on validation data: pass K_val and y_val")
    xp = array_namespace(K, y, *(a for a in (K_val, y_val) if a is not None))
    A, y = krr_operator(K, lam), xp.asarray(y)
    B = krr_query_operator(K_val, K, lam) if K_val is not None else None
    fits: list[Any] = []
    fits_val: list[Any] = []
    alphas: list[Any] = []
    for tau in range(steps):
        if tau == 0:
            weight = 1.0
        elif alpha is not None:
            weight = alpha
        else:
            assert B is not None  # alpha=None requires K_val (checked above)
            weight = best_ground_truth_weight(B, y, fits[-1], y_val)
        target = weight * y + (1 - weight) * (fits[-1] if tau else y)
        fits.append(A @ target)
        alphas.append(xp.asarray(weight, dtype=y.dtype))
        if B is not None:
            fits_val.append(B @ target)
    return xp.stack(fits), xp.stack(alphas), (xp.stack(fits_val) if B is not None else None)

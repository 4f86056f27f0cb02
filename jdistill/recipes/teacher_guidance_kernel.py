"""Ground-truth-guided self-distillation in kernel form (Borup & Andersen 2023, "Even your Teacher Needs
Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation"; methods.md A3). Pure functions.

Kernel ridge regression with Gram matrix K `[n, n]` and ridge lam fits training targets z with coefficients
(K + lam I)^-1 z, so its predictions at query points with kernel rows K_q `[m, n]` are B z, B = K_q (K + lam I)^-1
(`krr_query_operator`; B = A = K (K + lam I)^-1 at the training points, `losses.krr_operator`). Generation 1 fits
the labels y; generation tau fits alpha_tau * y + (1 - alpha_tau) * y_{tau-1} (its teacher's fitted values):

    y_1 = A y,   y_tau = A (alpha y + (1 - alpha) y_{tau-1})   ->   f_inf(x) = alpha k(x)^T (alpha K + lam I)^-1 y

(`losses.self_distillation_iterates`, `losses.self_distillation_limit`). A generation's predictions are affine in
its alpha, B y_{tau-1} + alpha B (y - y_{tau-1}), so two fits (alpha = 0 and alpha = 1) give the whole line and the
alpha minimising the squared error to validation targets in closed form (`losses.best_ground_truth_weight` with
the validation operator B; `guided_generations` picks it every generation). The deep recipe (`teacher_guidance`)
uses the same line through two ridge probes on the teacher's features (`probe_operator`: a linear kernel).
"""

from __future__ import annotations

from jdistill import losses
from jdistill.losses.selfdistill import _xp


def krr_query_operator(K_query, K, lam):
    """B = K_query (K + lam I)^-1 `[m, n]`: kernel ridge predictions at m query points are B @ targets."""
    xp = _xp(K_query, K)
    K = xp.asarray(K)
    regularised = K + lam * xp.eye(K.shape[0], dtype=K.dtype)
    return xp.linalg.solve(regularised.T, xp.asarray(K_query).T).T


def probe_operator(features_fit, features_eval, lam):
    """B `[m, n]` of a ridge regression with intercept on features `[n, d]`, evaluated at features `[m, d]`:
    KRR with the linear kernel on [features, 1], i.e. eval_predictions = B @ fit_targets for any targets."""
    xp = _xp(features_fit, features_eval)
    fit, evaluate = (xp.concatenate([xp.asarray(f), xp.ones((f.shape[0], 1), f.dtype)], axis=1)
                     for f in (features_fit, features_eval))
    return krr_query_operator(evaluate @ fit.T, fit @ fit.T, lam)


def probe_alpha(features_fit, targets_fit, teacher_fit, features_eval, targets_eval, lam):
    """The ground-truth weight in [0, 1] whose probe fit to alpha * targets + (1 - alpha) * teacher best predicts
    `targets_eval` (squared error): the closed form on the line through the alpha = 0 and alpha = 1 probe fits."""
    B = probe_operator(features_fit, features_eval, lam)
    alpha = losses.best_ground_truth_weight(B, targets_fit, teacher_fit, targets_eval)
    return _xp(B).clip(alpha, 0.0, 1.0)


def guided_generations(K, y, lam, steps: int, *, alpha=None, K_val=None, y_val=None):
    """`steps` generations of guided self-distilled KRR: (train fits `[steps, n, ...]`, alphas `[steps]`,
    validation predictions `[steps, m, ...]` or None when K_val `[m, n]` is not given).

    Generation 1 fits y (its alpha is 1). Later generations use the fixed `alpha`, or with alpha=None the alpha*
    minimising ||B (alpha y + (1 - alpha) y_prev) - y_val||^2, B = K_val (K + lam I)^-1 (unclipped, as in the
    paper's closed form).
    """
    if alpha is None and (K_val is None or y_val is None):
        raise ValueError("alpha=None chooses alpha on validation data: pass K_val and y_val")
    xp = _xp(K, y, *(a for a in (K_val, y_val) if a is not None))
    A, y = losses.krr_operator(K, lam), xp.asarray(y)
    B = krr_query_operator(K_val, K, lam) if K_val is not None else None
    fits, fits_val, alphas = [], [], []
    for tau in range(steps):
        if tau == 0:
            weight = 1.0
        else:
            weight = alpha if alpha is not None else losses.best_ground_truth_weight(B, y, fits[-1], y_val)
        target = weight * y + (1 - weight) * (fits[-1] if tau else y)
        fits.append(A @ target)
        alphas.append(xp.asarray(weight, dtype=y.dtype))
        if B is not None:
            fits_val.append(B @ target)
    return xp.stack(fits), xp.stack(alphas), (xp.stack(fits_val) if B is not None else None)


__all__ = ["guided_generations", "krr_query_operator", "probe_alpha", "probe_operator"]

"""Guided self-distillation in kernel form: alpha = 1 is plain KRR every generation, fixed-alpha iterates converge
to f_inf (training and validation points), the chosen alpha* minimises the validation error (against a grid), and
the ridge probe is KRR with a linear kernel whose fits are linear in the target."""

import numpy as np
import pytest

from jdistill import losses
from jdistill.losses import kernel_ridge


def _problem(n=30, m=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, n + m)
    gram = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2)
    truth = np.sin(x)
    y = truth + 0.5 * rng.normal(size=n + m)
    return gram[:n, :n], gram[n:, :n], y[:n], truth[n:]


def test_alpha_one_gives_plain_krr_every_generation():
    K, K_val, y, _ = _problem()
    fits, alphas, val = kernel_ridge.guided_generations(K, y, 0.1, 5, alpha=1.0, K_val=K_val)
    krr = np.linalg.solve(K + 0.1 * np.eye(len(y)), y)
    for tau in range(5):
        np.testing.assert_allclose(fits[tau], K @ krr, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(val[tau], K_val @ krr, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(alphas, 1.0)


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_fixed_alpha_iterates_converge_to_the_limit(alpha):
    K, K_val, y, _ = _problem()
    fits, _, val = kernel_ridge.guided_generations(K, y, 0.5, 400, alpha=alpha, K_val=K_val)
    np.testing.assert_allclose(fits[-1], losses.self_distillation_limit(K, K, y, 0.5, alpha), atol=1e-8)
    np.testing.assert_allclose(val[-1], losses.self_distillation_limit(K_val, K, y, 0.5, alpha), atol=1e-8)
    np.testing.assert_allclose(fits, losses.self_distillation_iterates(K, y, 0.5, alpha, 400), atol=1e-10)
    assert np.abs(fits[1] - fits[-1]).max() > 1e-3  # it did move


def test_chosen_alpha_minimises_the_validation_error_against_a_grid():
    K, K_val, y, truth_val = _problem(seed=3)
    lam = 0.05
    fits, alphas, val = kernel_ridge.guided_generations(K, y, lam, 4, K_val=K_val, y_val=truth_val)
    B = kernel_ridge.krr_query_operator(K_val, K, lam)
    for tau in range(1, 4):
        grid = np.linspace(-10.0, 10.0, 20001)
        errors = [np.sum((B @ (a * y + (1 - a) * fits[tau - 1]) - truth_val) ** 2) for a in grid]
        assert abs(alphas[tau] - grid[int(np.argmin(errors))]) <= 1e-3
        chosen = np.sum((val[tau] - truth_val) ** 2)
        assert chosen <= min(errors) + 1e-12


def test_query_operator_at_training_points_is_the_hat_matrix():
    K, _, _, _ = _problem()
    np.testing.assert_allclose(kernel_ridge.krr_query_operator(K, K, 0.3), losses.krr_operator(K, 0.3), atol=1e-10)


def test_probe_is_ridge_with_intercept_and_linear_in_its_target():
    rng = np.random.default_rng(0)
    fit, evaluate = rng.normal(size=(12, 4)), rng.normal(size=(9, 4))
    targets, teacher = np.eye(3)[rng.integers(0, 3, 12)], rng.dirichlet(np.ones(3), 12)
    B = kernel_ridge.probe_operator(fit, evaluate, 0.5)
    design = np.concatenate([fit, np.ones((12, 1))], 1)
    weights = np.linalg.solve(design.T @ design + 0.5 * np.eye(5), design.T @ targets)
    np.testing.assert_allclose(B @ targets, np.concatenate([evaluate, np.ones((9, 1))], 1) @ weights, atol=1e-10)
    np.testing.assert_allclose(B @ (0.3 * targets + 0.7 * teacher), 0.3 * B @ targets + 0.7 * B @ teacher, atol=1e-12)
    alpha = kernel_ridge.probe_alpha(fit, targets, teacher, evaluate, targets[:9], 0.5)
    grid = np.linspace(0, 1, 1001)
    errors = [np.sum((B @ (a * targets + (1 - a) * teacher) - targets[:9]) ** 2) for a in grid]
    assert 0.0 <= alpha <= 1.0 and abs(alpha - grid[int(np.argmin(errors))]) <= 1e-3


def test_choosing_alpha_needs_validation_data():
    K, _, y, _ = _problem()
    with pytest.raises(ValueError, match="validation"):
        kernel_ridge.guided_generations(K, y, 0.1, 2)

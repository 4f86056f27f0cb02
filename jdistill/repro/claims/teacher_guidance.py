"""`teacher-guidance` (Borup & Andersen 2023, "Even your Teacher Needs Guidance: Ground-Truth Targets Dampen
Regularization Imposed by Self-Distillation"): iterated self-distillation without the ground truth over-regularises;
the closed-form ground-truth weight alpha* per generation beats pure self-distillation (alpha = 0).

Three settings per seed:
- kernel ridge on a 1-D sinusoid (`losses.guided_generations`, closed form): n = 40 noisy training points of
  sin(2 pi x) on [0, 1] (noise sd 0.3, drawn per seed), an RBF kernel (length 0.15, ridge 0.05), 20 generations;
  alpha* per generation fitted on 40 noisy validation points; the error is the MSE to the noise-free sinusoid on a
  200-point grid.
  (20 generations: pure SD's error first falls, then rises as A^tau y shrinks towards 0.)
- kernel ridge on digits features (closed form, as on the sinusoid): the 64 pixels standardised with the training
  split's statistics (`label-noise-xi`'s frozen features), an RBF kernel whose length is the median pairwise
  distance of the fitted points, ridge 1, one-hot targets (10 outputs), 20 generations; a fixed 20 % of the training
  split (drawn per seed) is the validation set on which alpha* is chosen, the rest is fitted; clean test accuracy
  (argmax of the 10 outputs) per generation.
- digits, deep form: the `teacher_guidance` preset (alpha* per generation from ridge probes on the teacher's
  features) against the same job with `distill.options.alpha=0`, `generations` generations each.
Held: in every setting the guided last generation beats pure SD's (lower MSE; higher accuracy), and in both kernel
settings pure SD's last generation is worse than its best (over-regularisation).
"""

from __future__ import annotations

import numpy as np

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, pixel_features, quick_digits

N_TRAIN, N_VAL, N_GRID, NOISE_SD, LENGTH, RIDGE, KERNEL_GENERATIONS = 40, 40, 200, 0.3, 0.15, 0.05, 20
DIGITS_RIDGE, DIGITS_VAL_FRACTION = 1.0, 0.2


def rbf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.exp(-((a[:, None] - b[None, :]) ** 2) / (2 * LENGTH**2))


def kernel_errors(seed: int, alpha: float | None, generations: int = KERNEL_GENERATIONS) -> np.ndarray:
    """Test MSE `[generations]` of guided self-distilled KRR on the sinusoid (`alpha=None`: alpha* each step)."""
    from jdistill.losses import guided_generations, krr_query_operator

    rng = np.random.default_rng([seed, 2023])
    target = lambda x: np.sin(2 * np.pi * x)
    x, x_val, grid = rng.uniform(0, 1, N_TRAIN), rng.uniform(0, 1, N_VAL), np.linspace(0, 1, N_GRID)
    y = target(x) + NOISE_SD * rng.standard_normal(N_TRAIN)
    y_val = target(x_val) + NOISE_SD * rng.standard_normal(N_VAL)
    K = rbf(x, x)
    fits, alphas, _ = guided_generations(K, y, RIDGE, generations, alpha=alpha, K_val=rbf(x_val, x), y_val=y_val)
    B = krr_query_operator(rbf(grid, x), K, RIDGE)
    errors, previous = [], y
    for tau in range(generations):
        training_target = alphas[tau] * y + (1 - alphas[tau]) * previous
        errors.append(np.mean((B @ training_target - target(grid)) ** 2))
        previous = fits[tau]
    return np.asarray(errors)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 `[len(a), len(b)]` of feature rows."""
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def rbf_features(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """RBF Gram matrix `[len(a), len(b)]` of feature rows."""
    return np.exp(-squared_distances(a, b) / (2 * length**2))


def digits_kernel_accuracies(data_config, seed: int, alpha: float | None, generations: int = KERNEL_GENERATIONS):
    """(clean test accuracy `[generations]`, ground-truth weights `[generations]`) of guided self-distilled KRR on the
    standardised digit pixels (`alpha=None`: alpha* each generation, chosen on the held-back validation part of the
    training split; generation 1 fits the labels, weight 1)."""
    from jdistill.losses import guided_generations, krr_query_operator
    from jdistill.repro.linear_head import standardise

    train_x, train_y = pixel_features(data_config, "train")
    test_x, test_y = pixel_features(data_config, "test")
    train_x, test_x = standardise(train_x, test_x)
    order = np.random.default_rng([seed, 2023]).permutation(len(train_y))
    n_val = int(DIGITS_VAL_FRACTION * len(train_y))
    val, fit = order[:n_val], order[n_val:]
    distances = np.sqrt(squared_distances(train_x[fit], train_x[fit])[np.triu_indices(len(fit), 1)])
    length = float(np.median(distances))  # the median heuristic
    onehot = np.eye(int(train_y.max()) + 1)
    K = rbf_features(train_x[fit], train_x[fit], length)
    fits, alphas, _ = guided_generations(
        K,
        onehot[train_y[fit]],
        DIGITS_RIDGE,
        generations,
        alpha=alpha,
        K_val=rbf_features(train_x[val], train_x[fit], length),
        y_val=onehot[train_y[val]],
    )
    B = krr_query_operator(rbf_features(test_x, train_x[fit], length), K, DIGITS_RIDGE)
    accuracies, previous = [], onehot[train_y[fit]]
    for tau in range(generations):
        training_target = alphas[tau] * onehot[train_y[fit]] + (1 - alphas[tau]) * previous
        accuracies.append(np.mean((B @ training_target).argmax(1) == test_y))
        previous = fits[tau]
    return np.asarray(accuracies), np.asarray(alphas)


def measure(context: Context) -> dict[str, float]:
    generations = int(context.params["generations"])
    guided_kernel, pure_kernel = kernel_errors(context.seed, None), kernel_errors(context.seed, 0.0)
    data = context.config("teacher_guidance").data
    guided_digits, alphas = digits_kernel_accuracies(data, context.seed, None)
    pure_digits, _ = digits_kernel_accuracies(data, context.seed, 0.0)
    options = f"distill.options.generations={generations}"
    guided = context.job(context.config("teacher_guidance", options), "guided")
    pure_config = context.config("teacher_guidance", options, "distill.options.alpha=0", "run.baseline=false")
    pure = context.job(pure_config, "pure")
    last = f"student_teacher_guidance_gen{generations}"
    return {
        "kernel_mse_pure_best": float(pure_kernel.min()),
        "kernel_mse_pure_last": float(pure_kernel[-1]),
        "kernel_mse_guided_last": float(guided_kernel[-1]),
        "digits_kernel_accuracy_pure_best": float(pure_digits.max()),
        "digits_kernel_accuracy_pure_last": float(pure_digits[-1]),
        "digits_kernel_accuracy_guided_last": float(guided_digits[-1]),
        "digits_kernel_alpha_mean": float(alphas[1:].mean()),
        "digits_accuracy_teacher": metric(guided, "teacher", "accuracy"),
        "digits_accuracy_pure_last": metric(pure, last, "accuracy"),
        "digits_accuracy_guided_last": metric(guided, last, "accuracy"),
    }


def held(means) -> bool:
    return (
        means["kernel_mse_guided_last"] < means["kernel_mse_pure_last"]
        and means["kernel_mse_pure_last"] > means["kernel_mse_pure_best"]
        and means["digits_kernel_accuracy_guided_last"] > means["digits_kernel_accuracy_pure_last"]
        and means["digits_kernel_accuracy_pure_last"] < means["digits_kernel_accuracy_pure_best"]
        and means["digits_accuracy_guided_last"] > means["digits_accuracy_pure_last"]
    )


CLAIM = Claim(
    name="teacher-guidance",
    statement="iterated self-distillation without ground truth over-regularises; the closed-form ground-truth "
    "weight alpha* beats pure self-distillation",
    paper="Borup & Andersen 2023, Even your Teacher Needs Guidance",
    setting=f"kernel ridge on a noisy 1-D sinusoid and on digits features (standardised pixels, RBF; "
    f"{KERNEL_GENERATIONS} generations each), and the teacher_guidance digits preset (alpha* from ridge probes vs "
    "alpha = 0)",
    rule="kernel (sinusoid MSE, digits accuracy): guided better than pure at the last generation and pure's last "
    "worse than its best generation's; digits preset: guided accuracy > pure at the last generation (means over "
    "seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="kernel test MSE to the noise-free curve (squared units of y)",
        xlabel="kernel ridge on the sinusoid: generation",
        bars=(
            ("kernel_mse_pure_best", "best gen", "pure SD (alpha = 0)"),
            ("kernel_mse_pure_last", f"gen {KERNEL_GENERATIONS}", "pure SD (alpha = 0)"),
            ("kernel_mse_guided_last", f"gen {KERNEL_GENERATIONS}", "guided (alpha*)"),
        ),
        panels=(
            (
                "digits test accuracy (fraction)",
                "kernel ridge on digits features: generation",
                (
                    ("digits_kernel_accuracy_pure_best", "best gen", "pure SD (alpha = 0)"),
                    ("digits_kernel_accuracy_pure_last", f"gen {KERNEL_GENERATIONS}", "pure SD (alpha = 0)"),
                    ("digits_kernel_accuracy_guided_last", f"gen {KERNEL_GENERATIONS}", "guided (alpha*)"),
                ),
            ),
            (
                "digits test accuracy (fraction)",
                "digits, deep form (teacher_guidance preset): model",
                (
                    ("digits_accuracy_pure_last", "last gen", "pure SD (alpha = 0)"),  # the kernel panel's colours
                    ("digits_accuracy_guided_last", "last gen", "guided (alpha*)"),
                    ("digits_accuracy_teacher", "teacher", "teacher"),
                ),
            ),
        ),
    ),
    quick=(*quick_digits(), "distill.options.probe_batches=4"),
    presets=("teacher_guidance",),
    params={"generations": 3},
)

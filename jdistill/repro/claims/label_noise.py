"""`label-noise-xi` (Das & Sanghavi 2023, "Understanding Self-Distillation in the Presence of Label Noise"): under
heavy symmetric label noise, self-distillation with xi > 1 beats xi <= 1.

Two settings per seed (`setting=both`, or `net` / `linear` for one of them), the same noisy labels in both:
- net: the `xi_sd` preset (a 1-block gated-attention classifier with weight decay 0.05, teacher of the student's
architecture) on digits whose training labels carry `noise` symmetric noise (`jdistill.repro.noise`; teacher and
students see the same noisy labels, the test labels are clean). One job trains the teacher once and one student per
xi (the recipe's own stage at xi = 1.5, the others as `run.compare` stages; xi = 0 is plain CE on the noisy
labels). Numbers `accuracy_xi*`: each student's clean test accuracy.
- linear: a softmax linear head on frozen features (`jdistill.repro.linear_head`): the features are the 64 pixels
  of the digit, standardised with the training split's statistics (fixed; no encoder saw a label), L2 weight
  1 / n on W (scikit-learn's C = 1, as the library's linear probe), fitted full-batch with L-BFGS; the teacher is
  the xi = 0 head on the noisy labels, one student head per xi. Numbers `linear_accuracy_xi*`.
Held: in every setting measured, the best xi > 1 beats the best xi <= 1 (means over seeds).
"""

from __future__ import annotations

from jdistill.errors import ConfigError
from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, pixel_features, quick_digits, train_labels
from jdistill.repro.noise import label_noise_fn, noisy_labels

XIS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
MAIN_XI = 1.5  # the recipe's own stage, student_xi_sd
SETTINGS = {"both": ("net", "linear"), "net": ("net",), "linear": ("linear",)}
PREFIX = {"net": "accuracy_xi", "linear": "linear_accuracy_xi"}
LINEAR_ITERATIONS = 300


def tag(xi: float) -> str:
    return f"{xi:g}".replace(".", "p")


def stage_of(xi: float) -> str:
    return "student_xi_sd" if xi == MAIN_XI else f"student_xi{tag(xi)}"


def settings(context: Context) -> tuple[str, ...]:
    text = str(context.params["setting"])
    if text not in SETTINGS:
        raise ConfigError(f"setting={text}: expected one of {', '.join(SETTINGS)}")
    return SETTINGS[text]


def measure(context: Context) -> dict[str, float]:
    chosen = settings(context)  # a bad setting: one line, before any compute
    numbers = {}
    if "net" in chosen:
        numbers.update(measure_net(context))
    if "linear" in chosen:
        numbers.update(measure_linear(context))
    return numbers


def measure_net(context: Context) -> dict[str, float]:
    compare = [f"run.compare.xi{tag(xi)}.options.xi={xi}" for xi in XIS if xi != MAIN_XI]
    config = context.config("xi_sd", "run.baseline=false", f"distill.options.xi={MAIN_XI}", *compare)
    noise = label_noise_fn(
        train_labels(config.data), context.params["noise"], config.student.model.num_classes, config.seed
    )
    stages = ["teacher", *(stage_of(xi) for xi in XIS)]
    summary = context.job(config, "xi_sd", dataset_fns={stage: noise for stage in stages})
    return {f"accuracy_xi{tag(xi)}": metric(summary, stage_of(xi), "accuracy") for xi in XIS}


def measure_linear(context: Context) -> dict[str, float]:
    from jdistill.repro.linear_head import standardise, xi_sweep_accuracies

    config = context.config("xi_sd")
    train_x, train_y = pixel_features(config.data, "train")
    test_x, test_y = pixel_features(config.data, "test")
    train_x, test_x = standardise(train_x, test_x)
    classes = config.student.model.num_classes
    noisy = noisy_labels(train_y, context.params["noise"], classes, config.seed)
    accuracies = xi_sweep_accuracies(
        train_x, noisy, test_x, test_y, classes, XIS, l2=1.0 / len(train_y), iterations=LINEAR_ITERATIONS
    )
    return {f"linear_accuracy_xi{tag(xi)}": accuracies[xi] for xi in XIS}


def held_in(means, prefix: str) -> bool:
    above = max(means[f"{prefix}{tag(xi)}"] for xi in XIS if xi > 1)
    at_most = max(means[f"{prefix}{tag(xi)}"] for xi in XIS if xi <= 1)
    return above > at_most


def held(means) -> bool:
    """The rule in every setting whose numbers are present (`setting=net` / `linear` measures one)."""
    present = [prefix for prefix in PREFIX.values() if f"{prefix}0" in means]
    return bool(present) and all(held_in(means, prefix) for prefix in present)


CLAIM = Claim(
    name="label-noise-xi",
    statement="under heavy symmetric label noise, self-distillation with xi > 1 beats xi <= 1",
    paper="Das & Sanghavi 2023, Understanding Self-Distillation in the Presence of Label Noise",
    setting="digits, 50% symmetric label noise (train only), xi in {0, 0.5, 1, 1.5, 2, 3, 4}; a small net with "
    "weight decay (xi_sd preset: 1 block, weight decay 0.05) and a linear head (L2, C = 1) on frozen features (the "
    "standardised pixels)",
    rule="in each setting: max clean test accuracy over xi > 1 > max over xi <= 1 (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="clean test accuracy (fraction)",
        xlabel="xi (teacher weight in the target), small net",
        bars=tuple((f"accuracy_xi{tag(xi)}", f"{xi:g}", "net: xi > 1" if xi > 1 else "net: xi <= 1") for xi in XIS),
        panels=(
            (
                "clean test accuracy (fraction)",
                "xi, linear head on frozen pixel features",
                tuple(
                    (f"linear_accuracy_xi{tag(xi)}", f"{xi:g}", "linear: xi > 1" if xi > 1 else "linear: xi <= 1")
                    for xi in XIS
                ),
            ),
        ),
    ),
    quick=quick_digits(),
    presets=("xi_sd",),
    params={"noise": 0.5, "setting": "both"},
)

"""`label-noise-xi` (Das & Sanghavi 2023, "Understanding Self-Distillation in the Presence of Label Noise"): under
heavy symmetric label noise, self-distillation with xi > 1 beats xi <= 1.

One seed: the `xi_sd` preset (a 1-block gated-attention classifier with weight decay 0.05, teacher of the student's
architecture) on digits whose training labels carry `noise` symmetric noise (`jdistill.repro.noise`; teacher and
students see the same noisy labels, the test labels are clean). One job trains the teacher once and one student per
xi (the recipe's own stage at xi = 1.5, the others as `run.compare` stages; xi = 0 is plain CE on the noisy
labels). Numbers: each student's clean test accuracy. Held: the best xi > 1 beats the best xi <= 1 (means over
seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits, train_labels
from jdistill.repro.noise import label_noise_fn

XIS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
MAIN_XI = 1.5  # the recipe's own stage, student_xi_sd


def tag(xi: float) -> str:
    return f"{xi:g}".replace(".", "p")


def stage_of(xi: float) -> str:
    return "student_xi_sd" if xi == MAIN_XI else f"student_xi{tag(xi)}"


def measure(context: Context) -> dict[str, float]:
    compare = [f"run.compare.xi{tag(xi)}.options.xi={xi}" for xi in XIS if xi != MAIN_XI]
    config = context.config("xi_sd", "run.baseline=false", f"distill.options.xi={MAIN_XI}", *compare)
    noise = label_noise_fn(
        train_labels(config.data), context.params["noise"], config.student.model.num_classes, config.seed
    )
    stages = ["teacher", *(stage_of(xi) for xi in XIS)]
    summary = context.job(config, "xi_sd", dataset_fns={stage: noise for stage in stages})
    return {f"accuracy_xi{tag(xi)}": metric(summary, stage_of(xi), "accuracy") for xi in XIS}


def held(means) -> bool:
    above = max(means[f"accuracy_xi{tag(xi)}"] for xi in XIS if xi > 1)
    at_most = max(means[f"accuracy_xi{tag(xi)}"] for xi in XIS if xi <= 1)
    return above > at_most


CLAIM = Claim(
    name="label-noise-xi",
    statement="under heavy symmetric label noise, self-distillation with xi > 1 beats xi <= 1",
    paper="Das & Sanghavi 2023, Understanding Self-Distillation in the Presence of Label Noise",
    setting="digits, 50% symmetric label noise (train only), xi_sd preset (1-block net, weight decay 0.05), "
    "xi in {0, 0.5, 1, 1.5, 2, 3, 4}",
    rule="max clean test accuracy over xi > 1 > max over xi <= 1 (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="clean test accuracy (fraction)",
        xlabel="xi (teacher weight in the target)",
        bars=tuple((f"accuracy_xi{tag(xi)}", f"{xi:g}", "xi > 1" if xi > 1 else "xi <= 1") for xi in XIS),
    ),
    quick=quick_digits(),
    presets=("xi_sd",),
    params={"noise": 0.5},
)

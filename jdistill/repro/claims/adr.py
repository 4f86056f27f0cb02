"""`adr` (Wu et al. 2024, "Annealing Self-Distillation Rectification Improves Adversarial Training"): ADR's rectified
labels raise PGD accuracy over one-hot adversarial training.

One seed: the `adr` preset (PGD adversarial training towards labels rectified by the student's EMA) and, in the
same job, a `run.compare` stage with `lam_start = lam_end = 0` (then every rectified label is the one-hot label:
plain PGD adversarial training, same attack, budget and data order). Numbers: clean and robust (PGD) test accuracy
of both. Held: ADR's robust accuracy is higher (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits


def measure(context: Context) -> dict[str, float]:
    onehot = ("run.compare.onehot_at.options.lam_start=0", "run.compare.onehot_at.options.lam_end=0")
    summary = context.job(context.config("adr", "run.baseline=false", *onehot), "adr")
    return {
        f"{key}_{name}": metric(summary, stage, key)
        for name, stage in (("onehot_at", "student_onehot_at"), ("adr", "student_adr"))
        for key in ("accuracy", "robust_accuracy")
    }


def held(means) -> bool:
    return means["robust_accuracy_adr"] > means["robust_accuracy_onehot_at"]


CLAIM = Claim(
    name="adr",
    statement="ADR's rectified labels raise PGD accuracy over one-hot adversarial training",
    paper="Wu et al. 2024, Annealing Self-Distillation Rectification Improves Adversarial Training",
    setting="digits, adr preset (PGD-5, eps 0.1, 1000 steps) vs the same adversarial training on one-hot labels",
    rule="ADR robust accuracy > one-hot adversarial training's (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="test accuracy (fraction)",
        xlabel="evaluation",
        bars=(
            ("accuracy_onehot_at", "clean", "one-hot AT"),
            ("accuracy_adr", "clean", "ADR"),
            ("robust_accuracy_onehot_at", "PGD", "one-hot AT"),
            ("robust_accuracy_adr", "PGD", "ADR"),
        ),
    ),
    quick=(*quick_digits(("student",)), "distill.options.attack_steps=2"),
    presets=("adr",),
)

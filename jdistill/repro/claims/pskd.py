"""`pskd` (Kim et al. 2021, "Self-Knowledge Distillation with Progressive Refinement of Targets"): PS-KD improves
accuracy and calibration (ECE) over cross-entropy at the same budget.

One seed: the `pskd` preset (the student's targets move from the labels towards its own previous-epoch softmax,
alpha_T = 0.8) and its `student_scratch` stage (the same student, data order and budget, plain CE). Held: PS-KD's
test accuracy is higher and its ECE lower (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits


def measure(context: Context) -> dict[str, float]:
    summary = context.job(context.config("pskd"), "pskd")
    return {
        "accuracy_ce": metric(summary, "student_scratch", "accuracy"),
        "accuracy_pskd": metric(summary, "student_pskd", "accuracy"),
        "ece_ce": metric(summary, "student_scratch", "ece"),
        "ece_pskd": metric(summary, "student_pskd", "ece"),
    }


def held(means) -> bool:
    return means["accuracy_pskd"] > means["accuracy_ce"] and means["ece_pskd"] < means["ece_ce"]


CLAIM = Claim(
    name="pskd",
    statement="PS-KD improves accuracy and ECE over cross-entropy at the same budget",
    paper="Kim et al. 2021, Self-Knowledge Distillation with Progressive Refinement of Targets",
    setting="digits, pskd preset (1-block net, 1000 steps, alpha_T = 0.8) vs the same student on CE",
    rule="PS-KD accuracy > CE accuracy and PS-KD ECE < CE ECE (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="test accuracy / ECE (fraction)",
        xlabel="metric",
        bars=(
            ("accuracy_ce", "accuracy", "cross-entropy"),
            ("accuracy_pskd", "accuracy", "PS-KD"),
            ("ece_ce", "ECE (15 bins)", "cross-entropy"),
            ("ece_pskd", "ECE (15 bins)", "PS-KD"),
        ),
    ),
    quick=quick_digits(("student",)),
    presets=("pskd",),
)

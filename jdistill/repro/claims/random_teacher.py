"""`random-teacher` (Sarnthein et al. 2023, "Random Teachers are Good Teachers"): a student distilled from a frozen
random teacher has higher linear-probe and k-NN accuracy than the teacher.

One seed: the `random_teacher` preset (2-block encoder, no labels, student started close to the teacher,
init_alpha = 0.1); the job probes the untrained teacher and the student on the same test-split halves (2-fold
cross-fitted logistic-regression probe, weighted 20-NN). Held: the student's linear-probe and k-NN accuracies both
exceed the teacher's (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits

PROBES = (("linear_probe_accuracy", "linear probe"), ("knn_accuracy", "20-NN"))


def measure(context: Context) -> dict[str, float]:
    summary = context.job(context.config("random_teacher"), "random_teacher")
    numbers = {}
    for key, _ in PROBES:
        numbers[f"teacher_{key}"] = metric(summary, "teacher", key)
        numbers[f"student_{key}"] = metric(summary, "student_random_teacher", key)
    return numbers


def held(means) -> bool:
    return all(means[f"student_{key}"] > means[f"teacher_{key}"] for key, _ in PROBES)


CLAIM = Claim(
    name="random-teacher",
    statement="a student distilled from a frozen random teacher has higher linear-probe and k-NN accuracy than "
    "the teacher",
    paper="Sarnthein et al. 2023, Random Teachers are Good Teachers",
    setting="digits encoder, random_teacher preset (2 blocks, 1000 steps, init_alpha 0.1, no labels); both "
    "probed on the same test halves",
    rule="student linear-probe accuracy > teacher's and student k-NN accuracy > teacher's (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="probe accuracy on test halves (fraction)",
        xlabel="probe",
        bars=tuple(
            (f"{who}_{key}", label, name)
            for key, label in PROBES
            for who, name in (("teacher", "random teacher"), ("student", "student"))
        ),
    ),
    quick=quick_digits(),
    presets=("random_teacher",),
)

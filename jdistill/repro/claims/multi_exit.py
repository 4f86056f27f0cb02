"""`multi-exit` (hierarchical self-distillation of early exits, after MoSE): distilling each exit from the one above
raises the early exits' accuracy at no cost to the last exit.

One seed: the `multi_exit` preset (3 blocks, exits after blocks 1 and 2; the final head teaches exit 2, exit 2
teaches exit 1) and, in the same job, a `run.compare` stage with `distill_weight = 0` (every exit on labels alone,
same weights per exit, budget and data order). Numbers: each exit's test accuracy and the last exit's. Held: both
early exits are more accurate with distillation and the last exit is at least as accurate (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits

EXITS = (("exit1_accuracy", "exit 1"), ("exit2_accuracy", "exit 2"), ("accuracy", "last exit"))


def measure(context: Context) -> dict[str, float]:
    config = context.config("multi_exit", "run.baseline=false", "run.compare.labels_only.distill_weight=0")
    summary = context.job(config, "multi_exit")
    return {
        f"{key}_{name}": metric(summary, stage, key)
        for name, stage in (("labels", "student_labels_only"), ("distilled", "student_multi_exit"))
        for key, _ in EXITS
    }


def held(means) -> bool:
    early = all(means[f"{key}_distilled"] > means[f"{key}_labels"] for key in ("exit1_accuracy", "exit2_accuracy"))
    return early and means["accuracy_distilled"] >= means["accuracy_labels"]


CLAIM = Claim(
    name="multi-exit",
    statement="hierarchical self-distillation raises early exits' accuracy at no cost to the last exit",
    paper="hierarchical multi-exit self-distillation (after MoSE)",
    setting="digits, multi_exit preset (3 blocks, exits after 1 and 2, T = 2, 1500 steps) vs distill_weight 0",
    rule="exit 1 and exit 2 accuracy higher with distillation and last-exit accuracy not lower (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="test accuracy (fraction)",
        xlabel="exit",
        bars=tuple(
            (f"{key}_{name}", label, legend)
            for key, label in EXITS
            for name, legend in (("labels", "labels only"), ("distilled", "hierarchical self-distillation"))
        ),
    ),
    quick=quick_digits(("teacher", "student")),
    presets=("multi_exit",),
)

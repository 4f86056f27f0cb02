"""`quantized` (Polino et al. 2018, "Model compression via distillation and quantization"): a 4-bit student trained
with distillation beats the same 4-bit student trained without it.

One seed: the `quantized` preset (straight-through 4-bit student, 0.7 T^2 KL + 0.3 CE at T = 2 from a trained
2-block teacher) and, in the same job, a `run.compare` stage with `distill_weight = 0` (the same quantised
training on labels alone, same budget and data order). Numbers: the deployed 4-bit students' test accuracy
(`quantized_accuracy`). Held: the distilled one is more accurate (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric, quick_digits


def measure(context: Context) -> dict[str, float]:
    config = context.config("quantized", "run.baseline=false", "run.compare.no_distill.distill_weight=0")
    summary = context.job(config, "quantized")
    return {
        "teacher_accuracy": metric(summary, "teacher", "accuracy"),
        "quantized_accuracy_no_distill": metric(summary, "student_no_distill", "quantized_accuracy"),
        "quantized_accuracy_distilled": metric(summary, "student_quantized", "quantized_accuracy"),
    }


def held(means) -> bool:
    return means["quantized_accuracy_distilled"] > means["quantized_accuracy_no_distill"]


CLAIM = Claim(
    name="quantized",
    statement="a 4-bit student trained with distillation beats the same 4-bit student without it",
    paper="Polino et al. 2018, Model compression via distillation and quantization",
    setting="digits, quantized preset (4-bit buckets of 256, 1-block student, 2-block teacher, 1000 steps) vs "
    "distill_weight 0",
    rule="distilled 4-bit accuracy > 4-bit accuracy without distillation (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="test accuracy (fraction)",
        xlabel="model",
        bars=(
            ("teacher_accuracy", "teacher (full precision)", "teacher"),
            ("quantized_accuracy_no_distill", "4-bit, labels only", "4-bit student"),
            ("quantized_accuracy_distilled", "4-bit, distilled", "4-bit student"),
        ),
    ),
    quick=quick_digits(),
    presets=("quantized",),
)

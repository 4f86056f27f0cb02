"""`activations`: the expanded-gating-range activations xGELU / xSiLU / xATLU (Huang 2024, "Expanded Gating
Ranges Improve Activation Functions") and GoLU (Das et al. 2025, "Gompertz Linear Units") against GELU and SiLU.

One seed: six byte-level LMs on the embedded Python-stdlib corpus, identical but for `model.activation`, each the
teacher stage of the `lm_kd` preset (3 blocks, d 128, dense MLP, 600 steps, same data order and budget). Numbers:
held-out bits per byte. Held: each of xgelu, xsilu, xatlu and golu has lower bits per byte than the better of gelu
and silu (means over seeds).
"""

from __future__ import annotations

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import LM_TEACHER_ONLY, QUICK_LM_TEACHER, metric

BASELINES = ("gelu", "silu")
CANDIDATES = ("xgelu", "xsilu", "xatlu", "golu")


def measure(context: Context) -> dict[str, float]:
    numbers = {}
    for activation in (*BASELINES, *CANDIDATES):
        config = context.config("lm_kd", f"teacher.model.activation={activation}", *LM_TEACHER_ONLY)
        summary = context.job(config, f"activation_{activation}")
        numbers[f"bits_per_byte_{activation}"] = metric(summary, "teacher", "bits_per_byte")
    return numbers


def held(means) -> bool:
    best_baseline = min(means[f"bits_per_byte_{name}"] for name in BASELINES)
    return all(means[f"bits_per_byte_{name}"] < best_baseline for name in CANDIDATES)


CLAIM = Claim(
    name="activations",
    statement="xGELU / xSiLU / xATLU / GoLU beat GELU / SiLU at the same budget",
    paper="Huang 2024, Expanded Gating Ranges Improve Activation Functions; Das et al. 2025, Gompertz Linear Units",
    setting="byte-level LM on the embedded Python-stdlib corpus, lm_kd teacher (3 blocks, d 128, 600 steps), "
    "activation varied",
    rule="each of xgelu, xsilu, xatlu, golu below min(gelu, silu) in held-out bits per byte (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="held-out bits per byte (lower is better)",
        xlabel="MLP activation",
        bars=(
            *((f"bits_per_byte_{name}", name, "baseline") for name in BASELINES),
            *((f"bits_per_byte_{name}", name, "expanded gating / GoLU") for name in CANDIDATES),
        ),
    ),
    quick=QUICK_LM_TEACHER,
    presets=("lm_kd",),
)

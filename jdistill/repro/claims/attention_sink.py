"""`attention-sink` (Qiu et al. 2025, "Gated Attention for Large Language Models: Non-linearity, Sparsity, and
Attention-Sink-Free"): a sigmoid gate on the SDPA output removes the attention sink (the share of attention on the
first token, the largest hidden activation) and lowers the loss; headwise vs elementwise vs no gate.

One seed: three byte-level LMs on the embedded Python-stdlib corpus, identical but for `model.gate` (none,
headwise, elementwise), each the teacher stage of the `lm_kd` preset (3 blocks, d 128, 600 steps, same data order
and budget; the preset's student stage is cut to a few steps, it is not part of the claim). Then, on the held-out
windows, the trained model's per-layer statistics (`Transformer(..., return_stats=True)`): the first-token
attention share (mean over layers, heads and queries from the second on) and the largest |residual| activation
(max over layers, the mean over evaluation batches of each batch's max), and its bits per byte.
Held: both gated models have a lower first-token share, a lower largest activation and lower bits per byte than
the ungated one (means over seeds).
"""

from __future__ import annotations

import numpy as np

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import LM_TEACHER_ONLY, QUICK_LM_TEACHER, metric

GATES = ("none", "headwise", "elementwise")
STATS = ("first_token_share", "max_activation")
QUICK = QUICK_LM_TEACHER


def sink_statistics(run_dir, stage: str = "teacher") -> dict[str, float]:
    """{first_token_share, max_activation} of a trained stage over the run's evaluation windows."""
    import jax
    from flax import nnx

    from jdistill.train import inputs
    from jdistill.train.restore import load_stage

    model, config = load_stage(run_dir, stage)
    graphdef, params = nnx.split(model)

    @jax.jit
    def stats(params, tokens):
        aux = nnx.merge(graphdef, params)(tokens, return_stats=True, logits=False).aux
        return aux["first_token_share"].mean(), aux["max_activation"].max()

    values = [stats(params, batch["inputs"]) for batch in inputs.eval_batches(config.data, "lm")]
    shares, peaks = zip(*jax.device_get(values), strict=True)
    return {"first_token_share": float(np.mean(shares)), "max_activation": float(np.mean(peaks))}


def measure(context: Context) -> dict[str, float]:
    numbers = {}
    for gate in GATES:
        config = context.config("lm_kd", f"teacher.model.gate={gate}", *LM_TEACHER_ONLY)
        summary = context.job(config, f"gate_{gate}")
        numbers[f"bits_per_byte_{gate}"] = metric(summary, "teacher", "bits_per_byte")
        for key, value in sink_statistics(context.run_dir / f"gate_{gate}").items():
            numbers[f"{key}_{gate}"] = value
    return numbers


def held(means) -> bool:
    return all(
        means[f"{key}_{gate}"] < means[f"{key}_none"]
        for gate in ("headwise", "elementwise")
        for key in (*STATS, "bits_per_byte")
    )


CLAIM = Claim(
    name="attention-sink",
    statement="the SDPA output gate removes the attention sink (first-token attention share, largest hidden "
    "activation) and lowers the loss",
    paper="Qiu et al. 2025, Gated Attention for Large Language Models",
    setting="byte-level LM on the embedded Python-stdlib corpus, lm_kd teacher (3 blocks, d 128, 600 steps) "
    "with gate none / headwise / elementwise",
    rule="headwise and elementwise each below none in first-token share, largest activation and bits per byte "
    "(means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="first-token attention share (fraction, mean over layers)",
        xlabel="gate",
        bars=tuple((f"first_token_share_{gate}", gate, f"gate {gate}") for gate in GATES),
        panels=(
            (
                "largest |residual activation| (units of the residual)",
                "gate",
                tuple((f"max_activation_{gate}", gate, f"gate {gate}") for gate in GATES),
            ),
            (
                "held-out bits per byte",
                "gate",
                tuple((f"bits_per_byte_{gate}", gate, f"gate {gate}") for gate in GATES),
            ),
        ),
    ),
    quick=QUICK,
    presets=("lm_kd",),
)

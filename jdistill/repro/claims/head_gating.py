"""`head-gating` (Nam et al. 2025, "Causal Head Gating: A Framework for Interpreting Roles of Attention Heads in
Transformers"): causal head gating finds facilitating, interfering and irrelevant heads, and ablating the
interfering heads does not hurt.

One seed: a byte-level LM on the embedded Python-stdlib corpus, the teacher stage of the `lm_kd` preset with 4 heads
per block (3 blocks x 4 heads of dimension 32, d 128, 600 steps). Causal head gating on the frozen model
(`jdistill.eval.head_gating.analyze_head_gates`, as `jdistill analyze head-gates`: gate logits fitted with Adam for
`STEPS` steps each on the first `BATCHES` training batches, G at lam = 0, then G+ / G- at lam = +-0.01; a head is
facilitating when G+ and G- > 0.5, interfering when both < 0.5, irrelevant when G+ > 0.5 > G-). Numbers: the count of
each role, and the held-out bits per byte of the ungated model and of the model with each role's heads ablated
(gate 0, every other head 1; the evaluation split, not the batches the gates were fitted on). Ablating the
facilitating heads is the control: it should hurt.
Held: every role is found (each count's mean over seeds > 0), and the model with its interfering heads ablated has
bits per byte not above the ungated model's (means over seeds).
"""

from __future__ import annotations

import numpy as np

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import LM_TEACHER_ONLY, QUICK_LM_TEACHER

ROLES = ("facilitating", "interfering", "irrelevant")
LAM, STEPS, BATCHES, QUICK_STEPS, QUICK_BATCHES = 0.01, 200, 8, 10, 2


def ablated_bits_per_byte(model, batches, roles: np.ndarray) -> dict[str, float]:
    """{"none" (ungated), role: bits per byte with that role's heads gated to 0 (others 1)} over `batches`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.eval.batch import lm_kwargs, targets_and_mask
    from jdistill.eval.metrics import prediction_stats
    from jdistill.train.evaluation import evaluate

    graphdef, params = nnx.split(model)

    def eval_step(state, batch):
        params, gates = state
        labels, mask = targets_and_mask(batch)
        logits = nnx.merge(graphdef, params)(batch["inputs"], head_gates=gates, **lm_kwargs(batch)).logits
        return prediction_stats(logits, labels, mask)

    step = jax.jit(eval_step)
    out = {}
    for role in ("none", *ROLES):
        gates = jnp.asarray(roles != role, jnp.float32)
        out[role] = float(evaluate(step, (params, gates), batches, kind="lm")["bits_per_byte"])
    return out


def measure(context: Context) -> dict[str, float]:
    from jdistill.eval.head_gating import analyze_head_gates
    from jdistill.train import inputs
    from jdistill.train.restore import load_stage, stage_config_for

    config = context.config("lm_kd", "teacher.model.num_heads=4", *LM_TEACHER_ONLY)
    context.job(config, "lm")
    model, run_config = load_stage(context.run_dir / "lm", "teacher")
    stage = stage_config_for(run_config, "teacher")
    steps, count = (QUICK_STEPS, QUICK_BATCHES) if context.quick else (STEPS, BATCHES)
    dataset = inputs.train_dataset(run_config.data, stage.model, stage.train, run_config.seed)
    result = analyze_head_gates(model, [dataset[index] for index in range(count)], lam=LAM, steps=steps)
    numbers = {f"{role}_heads": float(np.sum(result.roles == role)) for role in ROLES}
    ablated = ablated_bits_per_byte(model, inputs.eval_batches(run_config.data, "lm"), result.roles)
    numbers.update({f"bits_per_byte_ablate_{role}": value for role, value in ablated.items()})
    return numbers


def held(means) -> bool:
    found = all(means[f"{role}_heads"] > 0 for role in ROLES)
    return found and means["bits_per_byte_ablate_interfering"] <= means["bits_per_byte_ablate_none"]


CLAIM = Claim(
    name="head-gating",
    statement="causal head gating finds facilitating / interfering / irrelevant heads; ablating the interfering "
    "ones does not hurt",
    paper="Nam et al. 2025, Causal Head Gating",
    setting="byte-level LM on the embedded Python-stdlib corpus, lm_kd teacher with 3 blocks x 4 heads (d 128, 600 "
    f"steps); gates fitted {STEPS} Adam steps each on {BATCHES} training batches, lam 0.01; ablations scored on the "
    "held-out split",
    rule="each role found (mean count > 0) and held-out bits per byte with the interfering heads ablated <= ungated "
    "(means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="held-out bits per byte (lower is better)",
        xlabel="heads ablated (gate 0)",
        bars=(
            ("bits_per_byte_ablate_none", "none", "ungated"),
            *((f"bits_per_byte_ablate_{role}", role, "ablated") for role in ROLES),
        ),
        panels=(("heads (count)", "role", tuple((f"{role}_heads", role, "heads") for role in ROLES)),),
    ),
    quick=(*QUICK_LM_TEACHER, "teacher.model.num_heads=4"),
    presets=("lm_kd",),
)

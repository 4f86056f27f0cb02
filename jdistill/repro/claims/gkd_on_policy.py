"""`gkd-on-policy` (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
Mistakes"): on-policy GKD (student-sampled completions with probability lam > 0) beats off-policy KD (lam = 0, the
dataset's completions) on the student's own generations.

One seed: the `gkd` preset (byte-level teacher, 3 blocks d 128, 600 steps -> student 1 block d 64, 400 steps,
generalized JSD beta = 0.5 on the completion tokens, lam = 0.5) and, in the same job, a `run.compare` stage with
`lam = 0` (the same student, loss, budget and data order on the dataset's completions only). Then, for each trained
student, on `PROMPTS` held-out prompts (the test split's functions: signature and docstring): the student samples
its own completions (64 bytes at the preset's sampling temperature 0.9, stopping at EOS, the sampling keys fixed
per seed and shared by both students), and the per-token divergence to the teacher on those completions is read
with the recipe's own loss at lam = 1: the generalized JSD (beta = 0.5, the quantity GKD trains) and the reverse
KL(student || teacher) (beta = 1). The job's held-out bits per byte on the dataset's completions is reported too
(not part of the rule: off-policy KD trains on exactly those).
Held: the on-policy student has a lower JSD and a lower reverse KL to the teacher on its own generations
(means over seeds).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import metric

PROMPTS, BATCH = 64, 16
STUDENTS = {"on_policy": "student_gkd", "off_policy": "student_off_policy"}
LEGENDS = {"off_policy": "off-policy KD (lam 0)", "on_policy": "on-policy GKD (lam 0.5)"}
DIVERGENCES = {"jsd": 0.5, "reverse_kl": 1.0}  # beta of the generalized JSD (1: reverse KL, as TRL)
QUICK = (
    "teacher.model.num_layers=1",
    "teacher.model.d_model=32",
    "teacher.model.mlp_dim=64",
    "student.model.d_model=16",
    "student.model.mlp_dim=32",
    *(f"{s}.train.{k}={v}" for s in ("teacher", "student") for k, v in (("steps", 10), ("warmup_steps", 2))),
    *(f"{s}.train.{k}=10" for s in ("teacher", "student") for k in ("eval_every", "checkpoint_every", "log_every")),
    "data.eval_max_batches=1",
    "data.eval_batch_size=8",
)
QUICK_PROMPTS = 8


def own_generation_divergences(run_dir, stage: str, prompts: int, seed: int) -> dict[str, float]:
    """{divergence: per-token mean} of the student `stage` to the run's teacher on the student's own completions of
    the first `prompts` held-out prompts (the recipe's loss at lam = 1, one sampling key per batch from `seed`)."""
    import jax
    import jax.numpy as jnp

    from jdistill.train import inputs
    from jdistill.train.job import checked_recipe
    from jdistill.train.restore import load_stage

    student, config = load_stage(run_dir, stage)
    teacher, _ = load_stage(run_dir, "teacher")
    examples = inputs.prompt_examples(config.data, split="test")
    count = min(prompts, len(examples))
    rows = [examples[i] for i in range(count)]
    batches = [
        {key: jnp.asarray(np.stack([row[key] for row in rows[start : start + BATCH]])) for key in rows[0]}
        for start in range(0, count, BATCH)
    ]
    recipe = checked_recipe(config)
    out = {}
    for name, beta in DIVERGENCES.items():
        own = dataclasses.replace(recipe, lam=1.0, beta=beta)
        loss = jax.jit(lambda batch, key, own=own: own.loss(student, teacher, (), batch, key)[0])
        sums = [loss(batch, jax.random.key(seed * 1000 + index)) for index, batch in enumerate(batches)]
        total, tokens = (float(np.sum([float(s[i]) for s in sums])) for i in (0, 1))
        out[name] = total / max(tokens, 1.0)
    return out


def measure(context: Context) -> dict[str, float]:
    config = context.config("gkd", "run.baseline=false", "run.compare.off_policy.options.lam=0")
    summary = context.job(config, "gkd")
    prompts = QUICK_PROMPTS if context.quick else PROMPTS
    numbers = {}
    for name, stage in STUDENTS.items():
        divergences = own_generation_divergences(context.run_dir / "gkd", stage, prompts, context.seed)
        numbers.update({f"{key}_own_{name}": value for key, value in divergences.items()})
        numbers[f"bits_per_byte_{name}"] = metric(summary, stage, "bits_per_byte")
    return numbers


def held(means) -> bool:
    return all(means[f"{key}_own_on_policy"] < means[f"{key}_own_off_policy"] for key in DIVERGENCES)


CLAIM = Claim(
    name="gkd-on-policy",
    statement="on-policy GKD (lam > 0) beats off-policy KD (lam = 0) on the student's own generations",
    paper="Agarwal et al. 2024, On-Policy Distillation of Language Models (GKD)",
    setting="gkd preset: byte-level teacher (3 blocks, d 128) -> student (1 block, d 64), 400 steps, JSD beta 0.5, "
    f"lam 0.5 vs lam 0; {PROMPTS} held-out function prompts, 64-byte student samples at temperature 0.9",
    rule="on-policy student's per-token JSD (beta 0.5) and reverse KL to the teacher on its own sampled "
    "completions both below the off-policy student's (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="per-token divergence to the teacher on the student's own samples (nats)",
        xlabel="divergence",
        bars=tuple(
            (f"{key}_own_{name}", label, legend)
            for key, label in (("jsd", "JSD (beta 0.5)"), ("reverse_kl", "reverse KL"))
            for name, legend in LEGENDS.items()
        ),
        panels=(
            (
                "held-out bits per byte on the dataset's completions",
                "student",
                tuple((f"bits_per_byte_{name}", legend, legend) for name, legend in LEGENDS.items()),
            ),
        ),
    ),
    quick=QUICK,
    presets=("gkd",),
)

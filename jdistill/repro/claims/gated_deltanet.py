"""`gated-deltanet` (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule"; the
3 linear : 1 full layout of Qwen3-Next): a hybrid of Gated DeltaNet and attention blocks ("DDDA") against attention
only at equal parameters: loss and tokens/s by length.

One seed: two byte-level LMs on the embedded Python-stdlib corpus, each the teacher stage of the `lm_kd` preset with
4 blocks (d 128, 600 steps, same data order and budget): `layer_pattern` "A" (every block gated attention) and
"DDDA" (three Gated DeltaNet blocks, then attention) with 2 key heads x 32 and 4 value heads x 32 in the DeltaNet
blocks, which makes the hybrid's parameter count within 1 % of the attention model's (862,456 vs 856,960; both
counts are reported). Numbers, on the trained models:
- held-out bits per byte at the training length (128 bytes, the job's evaluation) and at `LONG_EVAL` (512 bytes,
  4x the training length: the same held-out files cut into longer windows);
- forward (prefill) tokens/s at each of `LENGTHS` (batch 2, jitted, features without the output head, median of
  `REPEATS` timed calls after a warm-up; the two models timed alternately so that a change of machine load hits
  both).
Held: the hybrid's bits per byte at the training length is not above attention's, and its tokens/s at the longest
length is higher (means over seeds).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import LM_TEACHER_ONLY, QUICK_LM_TEACHER, metric

PATTERNS = {"attention": "A", "hybrid": "DDDA"}
MODEL = (
    "teacher.model.num_layers=4",
    "teacher.model.linear_key_heads=2",
    "teacher.model.linear_value_heads=4",
    "teacher.model.linear_key_head_dim=32",
    "teacher.model.linear_value_head_dim=32",
)
LENGTHS, QUICK_LENGTHS = (256, 1024, 4096), (64, 128)
LONG_EVAL, QUICK_LONG_EVAL = 512, 64
BATCH, REPEATS = 2, 5
# --quick: the shared LM quick sizes, but 4 blocks (2 would leave "DDDA" without its attention block)
QUICK = (*(o for o in QUICK_LM_TEACHER if not o.startswith("teacher.model.num_layers=")), "teacher.model.num_layers=4")


def bits_per_byte_at(run_dir, seq_len: int, stage: str = "teacher") -> float:
    """Held-out bits per byte of a trained LM stage on the evaluation split cut into `seq_len`-token windows."""
    from flax import nnx

    from jdistill.train import inputs
    from jdistill.train.evaluation import evaluate
    from jdistill.train.restore import load_stage
    from jdistill.train.step import make_eval_step

    model, config = load_stage(run_dir, stage)
    graphdef, params = nnx.split(model)
    batches = inputs.eval_batches(dataclasses.replace(config.data, seq_len=seq_len), "lm")
    return float(evaluate(make_eval_step(graphdef), params, batches, kind="lm")["bits_per_byte"])


def tokens_per_second(run_dirs: dict, lengths, batch: int = BATCH, repeats: int = REPEATS) -> dict[str, list[float]]:
    """{name: [tokens/s at each length]} of the trained teachers in `run_dirs` ({name: run dir}): a jitted forward
    of random tokens `[batch, length]` (features only), median of `repeats` calls after a warm-up, the models
    timed alternately call by call."""
    import time

    import jax
    from flax import nnx

    from jdistill.train.restore import load_stage

    forwards = {}
    for name, run_dir in run_dirs.items():
        model, _ = load_stage(run_dir, "teacher")
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x, logits=False).features)
        forwards[name] = (forward, params, model.config.vocab_size)
    out: dict[str, list[float]] = {name: [] for name in run_dirs}
    for length in lengths:
        times: dict[str, list[float]] = {name: [] for name in run_dirs}
        tokens = {}
        for name, (forward, params, vocab) in forwards.items():
            tokens[name] = jax.random.randint(jax.random.key(length), (batch, length), 0, vocab)
            jax.block_until_ready(forward(params, tokens[name]))  # compile and warm up
        for _ in range(repeats):
            for name, (forward, params, _) in forwards.items():
                start = time.perf_counter()
                jax.block_until_ready(forward(params, tokens[name]))
                times[name].append(time.perf_counter() - start)
        for name in run_dirs:
            out[name].append(batch * length / float(np.median(times[name])))
    return out


def parameter_count(run_dir, stage: str = "teacher") -> int:
    from jdistill.models import count_params
    from jdistill.train.restore import load_stage

    return count_params(load_stage(run_dir, stage)[0])


def measure(context: Context) -> dict[str, float]:
    quick = bool(context.quick)
    lengths, long_eval = (QUICK_LENGTHS, QUICK_LONG_EVAL) if quick else (LENGTHS, LONG_EVAL)
    numbers, run_dirs = {}, {}
    for name, pattern in PATTERNS.items():
        config = context.config("lm_kd", *MODEL, f"teacher.model.layer_pattern={pattern}", *LM_TEACHER_ONLY)
        summary = context.job(config, name)
        run_dirs[name] = context.run_dir / name
        numbers[f"bits_per_byte_{name}"] = metric(summary, "teacher", "bits_per_byte")
        numbers[f"bits_per_byte_long_{name}"] = bits_per_byte_at(run_dirs[name], long_eval)
        numbers[f"params_{name}"] = float(parameter_count(run_dirs[name]))
    speeds = tokens_per_second(run_dirs, lengths)
    for name, values in speeds.items():
        for length, value in zip(lengths, values, strict=True):
            numbers[f"tokens_per_s_{length}_{name}"] = value
    return numbers


def held(means) -> bool:
    longest = max(int(key.split("_")[3]) for key in means if key.startswith("tokens_per_s_"))
    return (
        means["bits_per_byte_hybrid"] <= means["bits_per_byte_attention"]
        and means[f"tokens_per_s_{longest}_hybrid"] > means[f"tokens_per_s_{longest}_attention"]
    )


CLAIM = Claim(
    name="gated-deltanet",
    statement='a hybrid of Gated DeltaNet and attention blocks ("DDDA") matches attention only at equal parameters '
    "in loss and is faster at long lengths",
    paper="Yang, Kautz & Hatamizadeh 2024, Gated Delta Networks (the DDDA layout of Qwen3-Next)",
    setting="byte-level LM on the embedded Python-stdlib corpus, lm_kd teacher with 4 blocks (d 128, 600 steps), "
    'layer_pattern "A" vs "DDDA" (parameters within 1 %); forward tokens/s at 256 / 1024 / 4096 tokens, batch 2',
    rule="hybrid bits per byte at the training length <= attention's, and hybrid tokens/s > attention's at the "
    "longest length (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="held-out bits per byte (lower is better)",
        xlabel="evaluation window (tokens = bytes)",
        bars=tuple(
            (f"bits_per_byte{suffix}_{name}", label, f"{name} ({pattern})")
            for suffix, label in (("", "128 (training length)"), ("_long", "512"))
            for name, pattern in PATTERNS.items()
        ),
        panels=(
            (
                "forward tokens/s (higher is better)",
                "sequence length (tokens), batch 2",
                tuple(
                    (f"tokens_per_s_{length}_{name}", str(length), f"{name} ({pattern})")
                    for length in (*QUICK_LENGTHS, *LENGTHS)
                    for name, pattern in PATTERNS.items()
                ),
            ),
        ),
    ),
    quick=QUICK,
    presets=("lm_kd",),
)

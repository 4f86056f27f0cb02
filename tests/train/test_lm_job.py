"""The LM preset end to end at a tiny size: masked token-level KD on the byte-level corpus, bits per byte."""

import math

from jdistill.configs import load_config
from jdistill.train import run_teacher_student

TINY_LM = [
    f"{stage}.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("model.d_model", 16),
        ("model.num_layers", 1),
        ("model.mlp_dim", 32),
        ("train.steps", 6),
        ("train.warmup_steps", 1),
        ("train.eval_every", 3),
        ("train.log_every", 3),
        ("train.checkpoint_every", 3),
        ("train.batch_size", 4),
    )
] + ["data.seq_len=32", "data.eval_batch_size=8", "data.eval_max_batches=2", "run.progress=false", "run.plot=false"]


def test_lm_preset_learns_and_reports_bits_per_byte(tmp_path, untrained):
    config = load_config("lm_kd", TINY_LM)
    summary = run_teacher_student(config, tmp_path / "run")
    for stage in ("teacher", "student_scratch", "student_kd"):
        metrics = summary[stage]
        before = untrained(config, "teacher" if stage == "teacher" else "student")
        assert metrics["bits_per_byte"] < before["bits_per_byte"] - 0.2, stage  # 6 steps: about 0.3 bits
        bits = metrics["nll"] * metrics["count"] / math.log(2)  # the scored targets' NLL, in bits
        assert math.isclose(metrics["bits_per_byte"], bits / metrics["bytes"])  # per byte of text (EOS: 0 bytes)
        assert math.isclose(metrics["perplexity"], math.exp(metrics["nll"]))
        assert metrics["count"] == 2 * 8 * 32  # eval_max_batches * eval_batch_size * seq_len tokens
    assert summary["student_kd"]["params"] == summary["student_scratch"]["params"]

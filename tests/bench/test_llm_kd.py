"""`jdistill bench llm-kd` at toy size: every headline key, and both off-policy sides train the same loss on step 0
(same exported weights, same batch), so the comparison is like for like. Skipped without torch / trl."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from jdistill.bench.llm_kd import Settings, run

TINY = Settings(
    vocab_size=256,
    d_model=32,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
    teacher_layers=2,
    student_layers=1,
    batch=2,
    prompt_len=12,
    completion_len=6,
)
KEYS = (
    "jdistill_steps_per_s",
    "trl_steps_per_s",
    "speedup",
    "onpolicy_jdistill_steps_per_s",
    "onpolicy_trl_steps_per_s",
    "onpolicy_speedup",
)


def test_two_steps_report_every_key_and_equal_step0_losses():
    results = run(steps=2, warmup=0, settings=TINY)
    for key in KEYS:
        assert results[key] > 0, key
    assert results["onpolicy_trl_trainer"] in ("GKDTrainer", "DistillationTrainer")
    assert set(results["versions"]) == {"jax", "torch", "transformers", "trl"}
    assert abs(results["offpolicy_step0_loss_trl"] - results["offpolicy_step0_loss_jdistill"]) < 1e-4
    assert results["offpolicy_step0_loss_jdistill"] > 0.01  # different teacher and student: a real loss
    # on-policy: the student sampled every completion token (no EOS in 6 tokens of a random model is not
    # guaranteed, but at least one token per row is always real)
    assert results["onpolicy_gkd_jdistill_generated_tokens_per_step"] >= TINY.batch

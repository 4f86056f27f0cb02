"""The claims gated-deltanet, gkd-on-policy, head-gating and diffusion-few-step: which jobs they train (training
replaced by canned summaries), the numbers they read, their verdicts on hand-made means, the equal-parameter
setting of gated-deltanet, the head ablation against a direct computation, the reuse of finished bench students.
Their real runs are `-m slow` (test_quick_runs.py).

Broken on purpose: the hybrid's DeltaNet head sizes changed (parameters no longer within 1 %); the tokens/s
comparison taken at the shortest length; the GKD students' stages swapped (on-policy read from the lam = 0 stage);
the ablation mask inverted (`roles == role`: every other head ablated); a role count dropped from the verdict; the
bench student's cache ignored (trained again); the teacher's 4-step FD compared at 1 step."""

import math

import numpy as np
import pytest

from jdistill.repro.claims import diffusion_few_step, gated_deltanet, gkd_on_policy, head_gating
from tests.repro.test_claims import FakeJobs, context


def test_gated_deltanet_trains_attention_and_ddda_and_reads_their_numbers(monkeypatch, tmp_path, data_dir):
    jobs = FakeJobs(monkeypatch, lambda config, stage: {"bits_per_byte": len(config.teacher.model.layer_pattern)})
    monkeypatch.setattr(gated_deltanet, "bits_per_byte_at", lambda run_dir, seq_len: 10.0 + len(run_dir.name))
    monkeypatch.setattr(gated_deltanet, "parameter_count", lambda run_dir: 100)
    speeds = lambda run_dirs, lengths: {name: [1000.0 * (i + 1) for i in range(len(lengths))] for name in run_dirs}
    monkeypatch.setattr(gated_deltanet, "tokens_per_second", speeds)
    numbers = gated_deltanet.CLAIM.measure(context(tmp_path))
    models = [config.teacher.model for config, _, _ in jobs.calls]
    assert [m.layer_pattern for m in models] == ["A", "DDDA"] and {m.num_layers for m in models} == {4}
    assert numbers["bits_per_byte_attention"] == 1 and numbers["bits_per_byte_hybrid"] == 4
    assert numbers["bits_per_byte_long_hybrid"] == 16.0 and numbers["tokens_per_s_4096_hybrid"] == 3000.0


def test_gated_deltanet_models_have_equal_parameters_within_one_percent(data_dir):
    from flax import nnx

    from jdistill.models import Transformer, count_params

    counts = {}
    for name, pattern in gated_deltanet.PATTERNS.items():
        extra = (*gated_deltanet.MODEL, f"teacher.model.layer_pattern={pattern}")
        model_config = context(None).config("lm_kd", *extra).teacher.model
        counts[name] = count_params(nnx.eval_shape(lambda c=model_config: Transformer(c, rngs=nnx.Rngs(0))))
    assert abs(counts["hybrid"] / counts["attention"] - 1) < 0.01


def test_gated_deltanet_verdict_needs_loss_and_speed_at_the_longest_length():
    means = {
        "bits_per_byte_attention": 2.0,
        "bits_per_byte_hybrid": 1.99,
        "tokens_per_s_256_attention": 9000.0,
        "tokens_per_s_256_hybrid": 1000.0,
        "tokens_per_s_4096_attention": 1000.0,
        "tokens_per_s_4096_hybrid": 2000.0,
    }
    assert gated_deltanet.held(means)
    assert not gated_deltanet.held({**means, "bits_per_byte_hybrid": 2.01})
    assert not gated_deltanet.held({**means, "tokens_per_s_4096_hybrid": 900.0})


def test_gkd_compares_the_preset_with_a_lam_0_stage_on_own_generations(monkeypatch, tmp_path, data_dir):
    jobs = FakeJobs(monkeypatch, lambda config, stage: {"bits_per_byte": 2.0 if stage == "student_gkd" else 1.9})
    read = []

    def divergences(run_dir, stage, prompts, seed):
        read.append((run_dir.name, stage, prompts, seed))
        return {"jsd": 0.1, "reverse_kl": 0.5} if stage == "student_gkd" else {"jsd": 0.2, "reverse_kl": 0.7}

    monkeypatch.setattr(gkd_on_policy, "own_generation_divergences", divergences)
    numbers = gkd_on_policy.CLAIM.measure(context(tmp_path))
    ((config, name, _),) = jobs.calls
    assert config.run.compare == {"off_policy": {"options": {"lam": 0}}} and config.distill.options["lam"] == 0.5
    assert not config.run.baseline and name == "gkd"
    assert read == [("gkd", "student_gkd", 64, 1), ("gkd", "student_off_policy", 64, 1)]
    assert numbers == {
        "jsd_own_on_policy": 0.1,
        "reverse_kl_own_on_policy": 0.5,
        "bits_per_byte_on_policy": 2.0,
        "jsd_own_off_policy": 0.2,
        "reverse_kl_own_off_policy": 0.7,
        "bits_per_byte_off_policy": 1.9,
    }
    assert gkd_on_policy.held(numbers)
    assert not gkd_on_policy.held({**numbers, "reverse_kl_own_on_policy": 0.8})


def test_head_ablation_matches_a_direct_computation(data_dir):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.losses import cross_entropy
    from jdistill.models import ModelConfig, Transformer

    model = Transformer(ModelConfig(kind="lm", num_layers=2, d_model=16, num_heads=2, mlp_dim=32), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 256)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": jnp.ones((2, 8), jnp.int32)}
    roles = np.array([["facilitating", "interfering"], ["facilitating", "facilitating"]])
    out = head_gating.ablated_bits_per_byte(model, [batch], roles)

    graphdef, params = nnx.split(model)

    @jax.jit
    def nll(gates):
        logits = nnx.merge(graphdef, params)(batch["inputs"], head_gates=gates).logits
        return cross_entropy(logits, batch["targets"], mask=batch["mask"])

    direct = lambda gates: float(nll(jnp.ones((2, 2)) if gates is None else jnp.asarray(gates))) / math.log(2)

    assert out["none"] == pytest.approx(direct(None), rel=1e-5)
    assert out["irrelevant"] == pytest.approx(direct(None), rel=1e-5)  # no irrelevant head: nothing ablated
    assert out["interfering"] == pytest.approx(direct([[1.0, 0.0], [1.0, 1.0]]), rel=1e-5)
    assert out["facilitating"] == pytest.approx(direct([[0.0, 1.0], [0.0, 0.0]]), rel=1e-5)
    assert out["interfering"] != pytest.approx(out["none"], rel=1e-5)


def test_head_gating_verdict_needs_every_role_and_no_harm():
    means = {
        "facilitating_heads": 6.0,
        "interfering_heads": 1.0,
        "irrelevant_heads": 5.0,
        "bits_per_byte_ablate_none": 2.0,
        "bits_per_byte_ablate_facilitating": 3.0,
        "bits_per_byte_ablate_interfering": 1.99,
        "bits_per_byte_ablate_irrelevant": 2.01,
    }
    assert head_gating.held(means)
    for role in head_gating.ROLES:
        assert not head_gating.held({**means, f"{role}_heads": 0.0})
    assert not head_gating.held({**means, "bits_per_byte_ablate_interfering": 2.001})


def test_diffusion_students_are_reused_from_a_bench_work_dir_or_trained(monkeypatch, tmp_path, data_dir):
    jobs = FakeJobs(monkeypatch, lambda config, stage: {})
    work = tmp_path / "work"
    cached = work / "students" / "consistency" / "digits" / "seed1"
    cached.mkdir(parents=True)
    (cached / "summary.json").write_text("{}")
    seed_dir = tmp_path / "seed1"
    run = lambda name: diffusion_few_step.student_run(context(seed_dir, work=str(work)), name, tmp_path / "teacher")
    assert run("consistency") == cached and not jobs.calls
    assert run("tcd") == seed_dir / "tcd"
    ((config, name, _),) = jobs.calls
    assert name == "tcd" and config.seed == 1 and config.distill.recipe == "diffusion_consistency"
    assert config.distill.options["variant"] == "tcd"
    assert config.distill.options["teacher_run"] == str(tmp_path / "teacher")


def test_diffusion_2d_students_train_on_the_toy_data_with_the_teachers_model(monkeypatch, tmp_path, data_dir):
    from jdistill.models import ModelConfig

    jobs = FakeJobs(monkeypatch, lambda config, stage: {})
    teacher_model = ModelConfig(num_layers=2, d_model=24, num_heads=2, mlp_dim=24)
    ctx = context(tmp_path / "seed1", work=str(tmp_path / "empty"))
    run = diffusion_few_step.student_run(ctx, "reflow", tmp_path / "toy", "toy2d", teacher_model)
    assert run == tmp_path / "seed1" / "reflow_toy2d"
    ((config, _, _),) = jobs.calls
    assert config.distill.options["data"] == diffusion_few_step.TOY and not config.distill.options["class_conditional"]
    assert config.student.model == teacher_model and config.distill.options["teacher_run"] == str(tmp_path / "toy")


def test_a_diverged_diffusion_student_is_reported_not_raised(tmp_path, capsys):
    from jdistill.errors import NonFiniteError

    def diverge():
        raise NonFiniteError("student_diffusion_consistency: non-finite loss = nan at step 1")

    assert diffusion_few_step.diverged_as_none(context(tmp_path), "tcd", "toy2d", diverge) is None
    assert "tcd (toy2d, seed 1) diverged" in capsys.readouterr().err
    with pytest.raises(ValueError):  # any other error still stops the claim
        diffusion_few_step.diverged_as_none(context(tmp_path), "tcd", "toy2d", lambda: int("x"))


def test_diffusion_method_list_is_checked():
    from jdistill.errors import ConfigError

    assert diffusion_few_step.method_list("progressive, tcd") == ["progressive", "tcd"]
    with pytest.raises(ConfigError, match="methods=dmd9"):
        diffusion_few_step.method_list("dmd9")


def test_diffusion_verdict_compares_each_step_count_and_the_35_step_teacher():
    means = {
        "fd_teacher_1": 50.0,
        "fd_teacher_4": 12.0,
        "fd_teacher_35": 1.4,
        "fd_progressive_1": 60.0,
        "fd_progressive_4": 3.0,
        "fd_consistency_1": 2.8,
        "fd_consistency_4": 2.0,
        "swd_teacher_1": 0.5,
        "swd_teacher_4": 0.2,
        "swd_teacher_35": 0.05,
        "swd_reflow_1": 0.1,
        "swd_reflow_4": 0.3,
        "swd_tcd_4": 0.1,
    }
    assert diffusion_few_step.held(means)
    assert not diffusion_few_step.held({**means, "swd_tcd_4": 0.25})
    assert diffusion_few_step.held({**means, "swd_reflow_1": float("nan"), "swd_tcd_1": 0.2})  # diverged: left out
    assert not diffusion_few_step.held({**means, "fd_consistency_4": 2.2, "fd_progressive_4": 2.2})  # > 1.5 x 1.4
    assert not diffusion_few_step.held({**means, "fd_teacher_1": 2.0})
    assert not diffusion_few_step.held({**means, "fd_teacher_4": 1.9})

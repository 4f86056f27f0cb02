"""GKD: the on-policy decision is Bernoulli(lam), student samples are generate()'s, the loss is JSD on continuations."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import generate
from jdistill.recipes.gkd import GKD
from jdistill.train.job import run_job
from jdistill.train.step import make_loss_and_grad
from tests.recipes.family_a import train_log

LM = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32)
SEQ, PROMPT = 12, 4


@functools.cache
def _models():
    student = nnx.split(Transformer(LM, rngs=nnx.Rngs(0)))
    teacher = nnx.split(Transformer(LM, rngs=nnx.Rngs(1)))
    stream = np.random.default_rng(0).integers(1, 32, (3, SEQ + 1)).astype(np.int32)
    batch = {"inputs": stream[:, :-1], "targets": stream[:, 1:], "mask": np.ones((3, SEQ), bool)}
    return student, teacher, batch


def _sequences(recipe, rng):
    (graphdef, params), (teacher_graphdef, teacher_params), batch = _models()

    @jax.jit
    def run(params, teacher_params, batch, rng):
        return recipe.sequences(nnx.merge(graphdef, params), nnx.merge(teacher_graphdef, teacher_params), batch, rng)

    return run(params, teacher_params, batch, rng)


def test_on_policy_frequency_is_lam_and_exact_at_the_extremes():
    keys = jax.random.split(jax.random.key(0), 4000)
    for lam in (0.0, 0.3, 1.0):
        frequency = float(jax.vmap(GKD(lam=lam).on_policy)(keys).mean())
        if lam in (0.0, 1.0):
            assert frequency == lam
        else:
            assert abs(frequency - lam) < 0.03  # 4 standard deviations at n = 4000


def test_on_policy_continuations_are_the_students_generate_samples():
    (graphdef, params), _, batch = _models()
    rng = jax.random.key(7)
    inputs, targets, mask, on_policy = _sequences(GKD(lam=1.0, prompt_len=PROMPT), rng)
    expected = generate(
        nnx.merge(graphdef, params),
        batch["inputs"][:, :PROMPT],
        max_new_tokens=SEQ + 1 - PROMPT,
        rng=GKD.keys(rng)[1],
        temperature=0.9,
    )
    assert bool(on_policy)
    np.testing.assert_array_equal(inputs[:, :PROMPT], batch["inputs"][:, :PROMPT])
    np.testing.assert_array_equal(np.concatenate([inputs[:, PROMPT:], targets[:, -1:]], 1), expected)
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    assert not np.array_equal(inputs, batch["inputs"])
    np.testing.assert_array_equal(mask, np.broadcast_to(np.arange(SEQ) >= PROMPT - 1, mask.shape))


def test_off_policy_keeps_the_dataset_tokens_and_seq_kd_samples_the_teacher():
    _, (teacher_graphdef, teacher_params), batch = _models()
    rng = jax.random.key(3)
    inputs, targets, _, on_policy = _sequences(GKD(lam=0.0, prompt_len=PROMPT), rng)
    assert not bool(on_policy)
    np.testing.assert_array_equal(inputs, batch["inputs"])
    np.testing.assert_array_equal(targets, batch["targets"])
    inputs, targets, _, _ = _sequences(GKD(lam=0.0, prompt_len=PROMPT, seq_kd=True), rng)
    expected = generate(
        nnx.merge(teacher_graphdef, teacher_params),
        batch["inputs"][:, :PROMPT],
        max_new_tokens=SEQ + 1 - PROMPT,
        rng=GKD.keys(rng)[1],
        temperature=0.9,
    )
    np.testing.assert_array_equal(targets[:, PROMPT - 1 :], expected)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_beta_zero_is_forward_kl_on_the_continuation_and_no_gradient_flows_through_sampling():
    (graphdef, params), (teacher_graphdef, teacher_params), batch = _models()
    recipe = GKD(lam=0.0, beta=0.0, prompt_len=PROMPT, temperature=2.0)
    (total, count), metrics, _, grads = jax.jit(make_loss_and_grad(graphdef, recipe, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    s = np.asarray(nnx.merge(graphdef, params)(batch["inputs"]).logits) / 2.0
    t = np.asarray(nnx.merge(teacher_graphdef, teacher_params)(batch["inputs"]).logits) / 2.0
    log_ps, log_pt = _log_softmax(s), _log_softmax(t)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)[:, PROMPT - 1 :]
    assert float(count) == kl.size
    np.testing.assert_allclose(total / count, kl.mean(), rtol=1e-5)
    on = GKD(lam=1.0, beta=0.5, prompt_len=PROMPT)
    (total, _), metrics, _, grads = jax.jit(make_loss_and_grad(graphdef, on, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    assert float(metrics["on_policy"]) == 1.0 and np.isfinite(float(total))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_config_errors():
    with pytest.raises(ValueError, match="lam"):
        GKD(lam=1.5)
    # prompt_len beyond seq_len, classifiers: tests/train/test_checks_before_training.py


def test_preset_learns_on_policy(tmp_path, untrained):
    overrides = [
        f"{stage}.{key}={value}"
        for stage in ("teacher", "student")
        for key, value in (
            ("model.d_model", 16),
            ("model.num_layers", 1),
            ("model.mlp_dim", 32),
            ("train.steps", 10),
            ("train.warmup_steps", 1),
            ("train.eval_every", 10),
            ("train.log_every", 1),
            ("train.checkpoint_every", 10),
            ("train.batch_size", 4),
            ("train.learning_rate", 0.01),
        )
    ]
    overrides += [
        "data.seq_len=16",
        "data.eval_batch_size=4",
        "data.eval_max_batches=1",
        "distill.options.lam=1.0",
        "distill.options.prompt_len=4",
        "run.progress=false",
        "run.plot=false",
        "run.baseline=false",
        "run.tensorboard=false",
    ]
    config = load_config("gkd", overrides)
    summary = run_job(config, tmp_path / "run", progress=False)
    before = untrained(config)["bits_per_byte"]
    assert summary["student_gkd"]["bits_per_byte"] < before - 0.3  # 10 steps: about 0.5 bits
    assert train_log(tmp_path / "run", "student_gkd", "on_policy") == [1.0] * 10  # lam = 1: every step samples

"""GKD: the on-policy decision is Bernoulli(lam), student samples are sample_completions', the loss is the JSD on
completion tokens only (through EOS), each row as if alone whatever its left padding, against a numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import completion_mask, generate, sample_completions
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


def _prompt_batch(pad=0):
    """Ragged prompts (lengths 5, 2, 3) left-padded to 5 + `pad` with junk, completions of 4 / 2 / 3 real tokens."""
    rng = np.random.default_rng(1)
    lengths, completion_lengths, width = np.array([5, 2, 3]), np.array([4, 2, 3]), 5 + pad
    real = rng.integers(1, 32, (3, 5)).astype(np.int32)
    junk = np.random.default_rng(pad).integers(1, 32, (3, width)).astype(np.int32)  # padding is never attended
    prompt_mask = np.arange(width)[None, :] >= width - lengths[:, None]
    prompt = junk.copy()
    prompt[prompt_mask] = real[np.arange(5)[None, :] >= 5 - lengths[:, None]]
    completion = rng.integers(1, 32, (3, 4)).astype(np.int32)
    completion_mask = np.arange(4)[None, :] < completion_lengths[:, None]
    return {"prompt": prompt, "prompt_mask": prompt_mask, "completion": completion, "completion_mask": completion_mask}


def _run(recipe, method, batch, rng=None):
    """`recipe.<method>(student, teacher, batch, rng)` under jit."""
    (graphdef, params), (teacher_graphdef, teacher_params), _ = _models()

    @jax.jit
    def run(params, teacher_params, batch, rng):
        student, teacher = nnx.merge(graphdef, params), nnx.merge(teacher_graphdef, teacher_params)
        return getattr(recipe, method)(student, teacher, batch, rng)

    return run(params, teacher_params, batch, jax.random.key(0) if rng is None else rng)


def _loss_and_grad(recipe, batch, rng=None):
    (graphdef, params), (teacher_graphdef, teacher_params), _ = _models()
    rng = jax.random.key(0) if rng is None else rng
    return jax.jit(make_loss_and_grad(graphdef, recipe, teacher_graphdef))(params, (), teacher_params, batch, rng)


def test_on_policy_frequency_is_lam_and_exact_at_the_extremes():
    keys = jax.random.split(jax.random.key(0), 4000)
    for lam in (0.0, 0.3, 1.0):
        frequency = float(jax.vmap(GKD(lam=lam).on_policy)(keys).mean())
        if lam in (0.0, 1.0):
            assert frequency == lam
        else:
            assert abs(frequency - lam) < 0.03  # 4 standard deviations at n = 4000


def test_on_policy_completions_are_the_students_samples_of_exactly_max_new_tokens():
    (graphdef, params), _, window = _models()
    rng = jax.random.key(7)
    student = nnx.merge(graphdef, params)
    for batch, prompt_mask in ((window, None), (_prompt_batch(), _prompt_batch()["prompt_mask"])):
        recipe = GKD(lam=1.0, prompt_len=PROMPT, max_new_tokens=6)
        prompt, _, tokens, mask, on_policy, sampled = _run(recipe, "completions", batch, rng)
        expected = sample_completions(
            student, prompt, prompt_mask, max_new_tokens=6, rng=GKD.keys(rng)[1], temperature=0.9
        )
        assert bool(on_policy) and bool(sampled)
        # width: the longer of max_new_tokens and the batch's completion (window: SEQ + 1 - PROMPT = 9 tokens)
        assert tokens.shape[1] == max(6, SEQ + 1 - PROMPT if prompt_mask is None else 4)
        np.testing.assert_array_equal(tokens[:, :6], expected)
        assert np.asarray(mask[:, :6]).all() and not np.asarray(mask[:, 6:]).any()


def test_off_policy_keeps_the_dataset_completion_and_seq_kd_samples_the_teacher():
    _, (teacher_graphdef, teacher_params), window = _models()
    rng = jax.random.key(3)
    _, _, tokens, mask, on_policy, sampled = _run(GKD(lam=0.0, prompt_len=PROMPT), "completions", window, rng)
    assert not bool(on_policy) and not bool(sampled)
    np.testing.assert_array_equal(tokens, window["targets"][:, PROMPT - 1 :])
    batch = _prompt_batch()
    _, _, tokens, mask, _, _ = _run(GKD(lam=0.0), "completions", batch, rng)
    np.testing.assert_array_equal(
        np.where(mask, tokens, -1), np.where(batch["completion_mask"], batch["completion"], -1)
    )
    _, _, tokens, _, _, sampled = _run(GKD(lam=0.0, seq_kd=True), "completions", batch, rng)
    expected = generate(
        nnx.merge(teacher_graphdef, teacher_params),
        batch["prompt"],
        prompt_mask=batch["prompt_mask"],
        max_new_tokens=4,
        rng=GKD.keys(rng)[1],
        temperature=0.9,
    )
    assert bool(sampled)
    np.testing.assert_array_equal(tokens, expected)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_jsd(batch, beta, temperature):
    """(sum, count) of JSD_beta over the real completion tokens, every row run alone without padding (float64)."""
    (graphdef, params), (teacher_graphdef, teacher_params), _ = _models()
    student, teacher = nnx.merge(graphdef, params), nnx.merge(teacher_graphdef, teacher_params)
    total, count = 0.0, 0
    for row in range(len(batch["prompt"])):
        prompt = batch["prompt"][row][batch["prompt_mask"][row]]
        completion = batch["completion"][row][batch["completion_mask"][row]]
        sequence = jnp.asarray(np.concatenate([prompt, completion])[None, :-1])
        at = slice(len(prompt) - 1, None)  # the positions that predict the completion tokens
        s = np.asarray(student(sequence).logits[0, at], np.float64) / temperature
        t = np.asarray(teacher(sequence).logits[0, at], np.float64) / temperature
        log_ps, log_pt = _log_softmax(s), _log_softmax(t)
        if beta == 0:
            per_token = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
        else:
            log_m = np.log(beta * np.exp(log_pt) + (1 - beta) * np.exp(log_ps))
            per_token = beta * (np.exp(log_pt) * (log_pt - log_m)).sum(-1)
            per_token += (1 - beta) * (np.exp(log_ps) * (log_ps - log_m)).sum(-1)
        total, count = total + per_token.sum(), count + len(completion)
    return total, count


@pytest.mark.parametrize("beta, temperature", [(0.0, 2.0), (0.5, 1.0)])
def test_loss_is_the_jsd_on_real_completion_tokens_of_each_row_alone(beta, temperature):
    batch = _prompt_batch()
    (total, count), metrics, _, grads = _loss_and_grad(GKD(lam=0.0, beta=beta, temperature=temperature), batch)
    expected_total, expected_count = _reference_jsd(batch, beta, temperature)
    assert float(count) == expected_count == 9
    np.testing.assert_allclose(total, expected_total, rtol=2e-5)
    np.testing.assert_allclose(metrics["jsd"], expected_total / expected_count, rtol=2e-5)
    assert float(metrics["generated_tokens"]) == 0.0 and float(metrics["on_policy"]) == 0.0
    # more left padding (other junk) changes nothing, loss or gradient
    (padded_total, _), _, _, padded_grads = _loss_and_grad(
        GKD(lam=0.0, beta=beta, temperature=temperature), _prompt_batch(3)
    )
    np.testing.assert_allclose(padded_total, total, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(padded_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_window_batches_keep_the_continuation_loss():
    (graphdef, params), (teacher_graphdef, teacher_params), batch = _models()
    recipe = GKD(lam=0.0, beta=0.0, prompt_len=PROMPT, temperature=2.0)
    (total, count), _, _, _ = _loss_and_grad(recipe, batch)
    s = np.asarray(nnx.merge(graphdef, params)(batch["inputs"]).logits) / 2.0
    t = np.asarray(nnx.merge(teacher_graphdef, teacher_params)(batch["inputs"]).logits) / 2.0
    log_ps, log_pt = _log_softmax(s), _log_softmax(t)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)[:, PROMPT - 1 :]
    assert float(count) == kl.size
    np.testing.assert_allclose(total / count, kl.mean(), rtol=1e-5)


def test_on_policy_eos_ends_the_loss_and_no_gradient_flows_through_sampling():
    batch = _prompt_batch()
    greedy = GKD(lam=1.0, sample_temperature=0.0)
    free = np.asarray(_run(greedy, "completions", batch)[2])
    eos_id = int(free[0, 1])  # row 0 ends at its second token (or before)
    recipe = GKD(lam=1.0, sample_temperature=0.0, eos_id=eos_id, pad_id=31)
    _, _, tokens, mask, _, _ = _run(recipe, "completions", batch)
    expected_mask = np.asarray(completion_mask(tokens, eos_id))
    np.testing.assert_array_equal(mask, expected_mask)
    assert not expected_mask[0, 2:].any() and (np.asarray(tokens)[~expected_mask] == 31).all()
    (total, count), metrics, _, grads = _loss_and_grad(recipe, batch)
    assert float(count) == expected_mask.sum() == float(metrics["generated_tokens"])
    np.testing.assert_allclose(metrics["generated_length"], expected_mask.sum() / 3)
    assert float(metrics["on_policy"]) == 1.0 and np.isfinite(float(total))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_config_errors():
    for bad in (dict(lam=1.5), dict(beta=-0.1), dict(max_new_tokens=0), dict(chunk_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GKD(**bad)
    # prompt_len beyond seq_len, classifiers: tests/train/test_checks_before_training.py


@pytest.mark.slow  # ~16 s quietly; moved out of the default suite for its 15-minute budget (session 9)
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
        "data.seq_len=96",
        "data.max_prompt_len=64",
        "data.eval_batch_size=8",
        "data.eval_max_batches=6",  # the first windows of the test split are mostly prompts (unscored)
        "distill.options.lam=1.0",
        "run.progress=false",
        "run.plot=false",
        "run.baseline=false",
        "run.tensorboard=false",
    ]
    config = load_config("gkd", overrides)
    summary = run_job(config, tmp_path / "run", progress=False)
    before = untrained(config)["bits_per_byte"]
    assert summary["student_gkd"]["bits_per_byte"] < before - 0.3  # 10 steps: about 1.1 bits (8.95 -> 7.85)
    assert train_log(tmp_path / "run", "student_gkd", "on_policy") == [1.0] * 10  # lam = 1: every step samples

"""Multi-exit self-distillation: deeper exits teach earlier ones; the loss matches the numpy formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.models.outputs import ModelOutput
from jdistill.recipes.multi_exit import MultiExitSelfDistillation
from jdistill.train.job import run_job
from jdistill.train.step import make_loss_and_grad

CONFIG = ModelConfig(kind="classifier", num_layers=3, d_model=16, num_heads=2, mlp_dim=32, exit_layers=(1, 2))


def _fixed(logits, exits):
    return lambda inputs: ModelOutput(logits=jnp.asarray(logits), exits=tuple(jnp.asarray(e) for e in exits))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(exits, labels, T, weights, distill_weight, label_weight):
    """sum_k w_k [label_weight CE(y, z_k) + distill_weight T^2 KL(p_{k+1} || p_k)], no KL on the last; mean."""
    total = 0.0
    for k, z in enumerate(exits):
        ce = -_log_softmax(z)[np.arange(len(labels)), labels]
        term = label_weight * ce
        if k + 1 < len(exits):
            log_p, log_q = _log_softmax(exits[k + 1] / T), _log_softmax(z / T)
            term = term + distill_weight * T**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
        total = total + weights[k] * term
    return total.mean()


def test_loss_matches_the_formula_over_exits_and_final_head():
    rng = np.random.default_rng(0)
    exits = [rng.normal(size=(6, 10)) * 2 for _ in range(3)]
    labels = rng.integers(0, 10, 6).astype(np.int32)
    recipe = MultiExitSelfDistillation(temperature=2.0, distill_weight=0.5, label_weight=1.0)
    (total, count), metrics, _ = recipe.loss(
        _fixed(exits[-1], exits[:-1]), None, (), {"inputs": None, "labels": labels}, None
    )
    weights = np.array([1, 2, 3]) / 6  # linear scheme
    expected = _reference(exits, labels, 2.0, weights, 0.5, 1.0)
    np.testing.assert_allclose(total / count, expected, rtol=1e-5)
    no_distill = _reference(exits, labels, 2.0, weights, 0.0, 1.0)
    np.testing.assert_allclose(metrics["distill"], (expected - no_distill) / 0.5, rtol=1e-4)
    uniform = MultiExitSelfDistillation(
        weight_scheme="uniform", teacher="next", temperature=2.0, distill_weight=0.5, exit_weights=[1.0, 1.0, 1.0]
    )
    (u_total, u_count), _, _ = uniform.loss(
        _fixed(exits[-1], exits[:-1]), None, (), {"inputs": None, "labels": labels}, None
    )
    np.testing.assert_allclose(u_total / u_count, _reference(exits, labels, 2.0, np.ones(3) / 3, 0.5, 1.0), rtol=1e-5)


def test_no_distillation_term_when_every_exit_equals_the_final_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 7))
    labels = rng.integers(0, 7, 5).astype(np.int32)
    recipe = MultiExitSelfDistillation(temperature=3.0, distill_weight=1.0, label_weight=1.0)
    (total, count), metrics, _ = recipe.loss(
        _fixed(logits, [logits, logits]), None, (), {"inputs": None, "labels": labels}, None
    )
    assert abs(float(metrics["distill"])) < 1e-6
    ce = -_log_softmax(logits)[np.arange(5), labels].mean()
    np.testing.assert_allclose(total / count, ce, rtol=1e-5)  # the weights sum to 1


def test_the_exit_heads_are_trained_through_the_loss():
    graphdef, params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.random((4, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 4).astype(np.int32)}
    _, metrics, _, grads = jax.jit(make_loss_and_grad(graphdef, MultiExitSelfDistillation(), None))(
        params, (), None, batch, jax.random.key(0)
    )
    assert float(jnp.abs(grads["exits"]["head"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads["exits"]["layer_embedding"]["embedding"][...]).max()) > 0
    assert float(metrics["distill"]) > 0


def test_label_weight_zero_is_refused():
    # missing exits and wrong exit_weights: tests/train/test_checks_before_training.py
    with pytest.raises(ValueError, match="label_weight"):
        MultiExitSelfDistillation(label_weight=0.0)


@pytest.mark.slow  # ~8 s quietly; moved out of the default suite for its 15-minute budget (session 9)
def test_preset_trains_every_exit(tmp_path, untrained):
    overrides = [
        "student.model.d_model=16",
        "student.model.mlp_dim=32",
        "student.train.steps=40",
        "student.train.warmup_steps=1",
        "student.train.eval_every=40",
        "student.train.log_every=20",
        "student.train.checkpoint_every=40",
        "student.train.batch_size=16",
        "student.train.learning_rate=0.01",
        "run.progress=false",
        "run.plot=false",
        "run.baseline=false",
        "run.tensorboard=false",
    ]
    config = load_config("multi_exit", overrides)
    summary = run_job(config, tmp_path / "run", progress=False)
    student, before = summary["student_multi_exit"], untrained(config)
    assert "teacher" not in summary
    for key in ("accuracy", "exit1_accuracy", "exit2_accuracy"):
        assert student[key] > before[key] + 0.15, key

"""xi self-distillation: the loss is CE to the mixed target, the teacher must share the student's architecture,
xi > 1 without weight decay warns, and the preset runs end to end."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.xi_sd import XiSelfDistillation
from jdistill.train.job import run_job
from tests.recipes.family_a import tiny_job

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.random((6, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 6).astype(np.int32)}


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("xi, temperature", [(0.0, 1.0), (1.5, 1.0), (3.5, 2.0)])
def test_loss_is_cross_entropy_to_the_mixed_target(xi, temperature):
    student, teacher = Transformer(CONFIG, rngs=nnx.Rngs(0)), Transformer(CONFIG, rngs=nnx.Rngs(1))
    batch = _batch()
    recipe = XiSelfDistillation(xi=xi, temperature=temperature, weight_decay=0.1)
    (total, count), _, state = recipe.loss(student, teacher, (), batch, jax.random.key(0))
    log_ps = _log_softmax(np.asarray(student(batch["inputs"]).logits, np.float64) / temperature)
    p_t = np.exp(_log_softmax(np.asarray(teacher(batch["inputs"]).logits, np.float64) / temperature))
    tau = xi * p_t + (1 - xi) * np.eye(10)[batch["labels"]]
    expected = -(tau * log_ps).sum(-1).mean()
    np.testing.assert_allclose(float(total / count), expected, rtol=1e-5, atol=1e-6)
    assert float(count) == 6 and state == ()


def test_teacher_of_another_architecture_is_a_config_error():
    student = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))[1]
    wider = nnx.split(
        Transformer(ModelConfig(kind="classifier", num_layers=1, d_model=32, num_heads=2, mlp_dim=32), rngs=nnx.Rngs(0))
    )[1]
    with pytest.raises(ConfigError, match=r"teacher\.model"):
        XiSelfDistillation(weight_decay=0.1).init(student, wider, jax.random.key(0))
    _, state = XiSelfDistillation(weight_decay=0.1).init(student, student, jax.random.key(0))
    assert state == ()


def test_xi_above_one_warns_only_without_weight_decay():
    from jdistill.recipes.base import RunFacts

    params = {"w": jnp.zeros((2, 2))}

    def start(xi, weight_decay):
        facts = RunFacts(total_steps=10, steps_per_epoch=5.0, num_examples=20, batch_size=4, weight_decay=weight_decay)
        XiSelfDistillation(xi=xi).bind(facts).init(params, params, jax.random.key(0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start(1.5, 0.05)
        start(0.8, 0.0)
        assert not caught
        start(1.5, 0.0)  # the student's weight decay reaches the recipe through bind()
        assert len(caught) == 1 and "unbounded below" in str(caught[0].message)


def test_preset_learns_from_a_trained_teacher(tmp_path, pretrained_teacher, untrained):
    config = load_config("xi_sd", tiny_job(*pretrained_teacher, "student.train.learning_rate=0.01", steps=40))
    summary = run_job(config, tmp_path / "run", progress=False)
    student, before = summary["student_xi_sd"], untrained(config)
    assert student["accuracy"] > before["accuracy"] + 0.15 and student["nll"] < before["nll"] - 0.4

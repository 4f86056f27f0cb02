"""Self-Evolution KD: gamma = 0 (or no hard tokens) is token-level KD for LMs and classifiers; mixing lowers the
hard tokens' loss; the LM preset runs end to end."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation
from jdistill.recipes.sekd import SelfEvolutionKD
from jdistill.train.job import run_job

CLASSIFIER = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
LM = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32, max_seq_len=16)
TINY_LM = [
    f"{stage}.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("model.d_model", 16),
        ("model.num_layers", 1),
        ("model.mlp_dim", 32),
        ("train.steps", 4),
        ("train.warmup_steps", 1),
        ("train.eval_every", 4),
        ("train.log_every", 2),
        ("train.checkpoint_every", 4),
        ("train.batch_size", 4),
    )
] + [
    "data.seq_len=32",
    "data.eval_batch_size=8",
    "data.eval_max_batches=1",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
    "run.baseline=false",
]


def _models_and_batch(kind):
    rng = np.random.default_rng(0)
    if kind == "lm":
        config = LM
        batch = {
            "inputs": rng.integers(0, 32, (3, 16)).astype(np.int32),
            "targets": rng.integers(0, 32, (3, 16)).astype(np.int32),
            "mask": rng.random((3, 16)) < 0.8,
        }
    else:
        config = CLASSIFIER
        batch = {"inputs": rng.random((6, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 6).astype(np.int32)}
    return Transformer(config, rngs=nnx.Rngs(0)), Transformer(config, rngs=nnx.Rngs(1)), batch


def _loss(recipe, student, teacher, batch):
    (total, count), metrics, _ = recipe.loss(student, teacher, (), batch, jax.random.key(0))
    return float(total / count), metrics


@pytest.mark.parametrize("kind", ["lm", "classifier"])
@pytest.mark.parametrize("no_mixing", [dict(gamma_max=0.0), dict(hard_fraction=0.0)])
def test_without_mixing_it_is_token_level_kd(kind, no_mixing):
    student, teacher, batch = _models_and_batch(kind)
    shared = dict(temperature=2.0, distill_weight=0.7, label_weight=0.3, scale_by_temperature_squared=True)
    sekd, _ = _loss(SelfEvolutionKD(**shared, **no_mixing), student, teacher, batch)
    kd, _ = _loss(KnowledgeDistillation(objective="forward_kl", **shared), student, teacher, batch)
    np.testing.assert_allclose(sekd, kd, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_mixing_the_prior_into_hard_tokens_changes_and_lowers_the_distillation_term(kind):
    student, teacher, batch = _models_and_batch(kind)
    _, plain = _loss(SelfEvolutionKD(gamma_max=0.0), student, teacher, batch)
    _, mixed = _loss(SelfEvolutionKD(gamma_max=0.5, hard_fraction=0.5), student, teacher, batch)
    assert float(mixed["distill"]) < float(plain["distill"])


def test_bad_gamma_is_rejected():
    with pytest.raises(ValueError, match="gamma_max"):
        SelfEvolutionKD(gamma_max=1.0)


def test_lm_preset_learns(tmp_path, untrained):
    config = load_config("sekd", TINY_LM + ["teacher.train.learning_rate=0.01", "student.train.learning_rate=0.01"])
    summary = run_job(config, tmp_path / "run", progress=False)
    assert summary["student_sekd"]["bits_per_byte"] < untrained(config)["bits_per_byte"] - 0.3  # about 0.5 bits

"""Feature distillation: layer-map parsing, the learned projection is trained, zero loss for identical features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.feature_kd import FeatureDistillation, FeatureStudent, parse_layer_map
from jdistill.train.job import run_job
from jdistill.train.step import make_loss_and_grad

STUDENT = ModelConfig(kind="lm", num_layers=2, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32)
TEACHER = ModelConfig(kind="lm", num_layers=3, d_model=24, num_heads=2, mlp_dim=48, vocab_size=32)


@functools.cache
def _batch():
    stream = np.random.default_rng(0).integers(0, 32, (2, 9)).astype(np.int32)
    return {"inputs": stream[:, :-1], "targets": stream[:, 1:], "mask": np.ones((2, 8), bool)}


def _loss_and_grad(recipe, student, teacher):
    graphdef, params = nnx.split(student)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    return jax.jit(make_loss_and_grad(graphdef, recipe, teacher_graphdef))(
        params, (), teacher_params, _batch(), jax.random.key(0))


def test_layer_map_parsing_and_errors():
    assert parse_layer_map("1:2, 2:4") == (("1", "2"), ("2", "4"))
    assert parse_layer_map(["-1:-1", "blocks.0.mlp:blocks.2.mlp"]) == (("-1", "-1"), ("blocks.0.mlp", "blocks.2.mlp"))
    for bad in ("1-2", "1:", "1:2:3", "", "1:2,"):
        with pytest.raises(ConfigError, match="layer_map"):
            parse_layer_map(bad)
    # layers that do not exist, widths without a projection: tests/train/test_checks_before_training.py


def test_the_projection_is_a_student_parameter_and_gets_gradients():
    recipe = FeatureDistillation(layer_map="1:2,2:3", teacher_width=24, attention_weight=10.0)
    student = recipe.wraps_student()(STUDENT, nnx.Rngs(0))
    assert isinstance(student, FeatureStudent) and len(student.projections) == 2
    (total, count), metrics, _, grads = _loss_and_grad(recipe, student, Transformer(TEACHER, rngs=nnx.Rngs(1)))
    for projection in grads["projections"].values():
        assert projection["kernel"][...].shape == (16, 24)
        assert float(jnp.abs(projection["kernel"][...]).max()) > 0
    assert float(metrics["feature"]) > 0 and float(metrics["attention_transfer"]) > 0
    # numpy FitNets hint for the first pair: mean over width and positions of (u W - v)^2, plus the second pair
    teacher = Transformer(TEACHER, rngs=nnx.Rngs(1))
    u = student.model(_batch()["inputs"], return_hidden_states=True).hidden_states
    v = teacher(_batch()["inputs"], return_hidden_states=True).hidden_states
    hint = sum(np.mean((np.asarray(u[s]) @ np.asarray(p.kernel[...]) - np.asarray(v[t])) ** 2)
               for (s, t), p in zip(((1, 2), (2, 3)), student.projections))
    np.testing.assert_allclose(metrics["feature"], hint, rtol=1e-4)


@pytest.mark.parametrize("feature_loss", ["mse", "cosine"])
def test_zero_loss_when_the_student_is_the_teacher(feature_loss):
    recipe = FeatureDistillation(layer_map="1:1,2:2,blocks.0.mlp:blocks.0.mlp", feature_loss=feature_loss,
                                 attention_weight=100.0)
    model = Transformer(STUDENT, rngs=nnx.Rngs(0))
    (total, count), metrics, _, grads = _loss_and_grad(recipe, model, model)
    assert abs(float(total / count)) < 1e-5
    assert abs(float(metrics["feature"])) < 1e-6 and abs(float(metrics["attention_transfer"])) < 1e-9
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-4


def test_preset_runs_end_to_end(tmp_path, data_dir):
    overrides = [f"{stage}.{key}={value}" for stage in ("teacher", "student")
                 for key, value in (("train.steps", 3), ("train.warmup_steps", 1), ("train.eval_every", 3),
                                    ("train.log_every", 3), ("train.checkpoint_every", 3), ("train.batch_size", 8))]
    overrides += ["teacher.model.d_model=16", "teacher.model.mlp_dim=16", "student.model.d_model=8",
                  "student.model.mlp_dim=16", "distill.options.teacher_width=16", "run.progress=false",
                  "run.plot=false", "run.baseline=false", "run.tensorboard=false", "data.eval_max_batches=1"]
    summary = run_job(load_config("feature_kd", overrides), tmp_path / "run", progress=False)
    assert 0.0 <= summary["student_feature_kd"]["accuracy"] <= 1.0

"""Quantized distillation: the forward runs at Q(w), the straight-through gradient updates w, 32 bits ~ plain KD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill import losses
from jdistill.configs import load_config
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation
from jdistill.recipes.quantized import QuantizedDistillation, is_weight_matrix
from jdistill.train.job import run_job
from jdistill.train.step import make_loss_and_grad

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


@functools.cache
def _setup():
    graphdef, params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))
    teacher_graphdef, teacher_params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.random((8, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 8).astype(np.int32)}
    return graphdef, params, teacher_graphdef, teacher_params, batch


def _plain_quantize(recipe, params):
    return jax.tree.map(
        lambda x: losses.quantize(x, recipe.bits, bucket_size=recipe.bucket_size) if is_weight_matrix(x) else x, params
    )


def _loss_at(graphdef, params, teacher, batch, temperature=2.0, distill_weight=0.7):
    """The paper's loss of the student with exactly `params` (jitted: eager dispatch is slow on CPU)."""
    return jax.jit(lambda params: _loss(graphdef, params, teacher, batch, temperature, distill_weight))(params)


def _loss(graphdef, params, teacher, batch, temperature, distill_weight):
    logits = nnx.merge(graphdef, params)(batch["inputs"]).logits
    return losses.quantized_distillation_loss(
        logits, teacher(batch["inputs"]).logits, batch["labels"], temperature, distill_weight=distill_weight
    )


def test_forward_pass_runs_at_the_quantized_weights():
    graphdef, params, teacher_graphdef, teacher_params, batch = _setup()
    recipe = QuantizedDistillation(bits=2, bucket_size=64)
    forward, quantized = recipe.forward_params(params), _plain_quantize(recipe, params)
    for leaf, q, w in zip(jax.tree.leaves(forward), jax.tree.leaves(quantized), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(leaf, q, atol=1e-6)  # w + stop_gradient(Q(w) - w) == Q(w) up to rounding
        if is_weight_matrix(w):
            buckets = np.pad(np.ravel(q), (0, -q.size % 64), mode="edge").reshape(-1, 64)
            assert max(len(np.unique(row)) for row in buckets) <= 4
            assert not np.allclose(q, w)
    (total, count), _, _, _ = jax.jit(make_loss_and_grad(graphdef, recipe, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    teacher = nnx.merge(teacher_graphdef, teacher_params)
    quantized_loss = _loss_at(graphdef, _plain_quantize(recipe, params), teacher, batch)
    full_precision_loss = _loss_at(graphdef, params, teacher, batch)
    np.testing.assert_allclose(total / count, quantized_loss, rtol=1e-5)
    assert abs(float(quantized_loss) - float(full_precision_loss)) > 1e-3


def test_straight_through_gradient_is_taken_at_q_of_w_and_applied_to_w():
    graphdef, params, teacher_graphdef, teacher_params, batch = _setup()
    recipe = QuantizedDistillation(bits=2, bucket_size=64)
    _, _, _, grads = jax.jit(make_loss_and_grad(graphdef, recipe, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    teacher = nnx.merge(teacher_graphdef, teacher_params)
    quantized = _plain_quantize(recipe, params)
    count = batch["labels"].shape[0]
    expected = jax.jit(jax.grad(lambda q: _loss(graphdef, q, teacher, batch, 2.0, 0.7) * count))(quantized)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    kernel_grads = [
        g for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True) if is_weight_matrix(w)
    ]
    assert all(float(jnp.abs(g).max()) > 0 for g in kernel_grads)  # rounding alone would give zero gradients
    # the update lands on the full-precision weights, which stay off the 4-level grid
    updated = jax.tree.map(lambda w, g: w - 0.1 * g, params, grads)
    leaf = next(x for x in jax.tree.leaves(updated) if is_weight_matrix(x))
    assert len(np.unique(np.asarray(leaf))) > 4


def test_32_bits_is_plain_kd():
    graphdef, params, teacher_graphdef, teacher_params, batch = _setup()
    quantized = QuantizedDistillation(bits=32, bucket_size=256)
    kd = KnowledgeDistillation(temperature=2.0, distill_weight=0.7, label_weight=0.3)
    (q_total, q_count), _, _, q_grads = jax.jit(make_loss_and_grad(graphdef, quantized, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    (k_total, k_count), _, _, k_grads = jax.jit(make_loss_and_grad(graphdef, kd, teacher_graphdef))(
        params, (), teacher_params, batch, jax.random.key(0)
    )
    np.testing.assert_allclose(q_total / q_count, k_total / k_count, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(q_grads), jax.tree.leaves(k_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_preset_learns_from_a_trained_teacher_and_reports_the_quantized_student(
    tmp_path, pretrained_teacher, untrained
):
    overrides = [
        f"student.{key}={value}"
        for key, value in (
            ("train.steps", 40),
            ("train.warmup_steps", 1),
            ("train.eval_every", 40),
            ("train.log_every", 20),
            ("train.checkpoint_every", 40),
            ("train.batch_size", 16),
            ("train.learning_rate", 0.01),
        )
    ]
    overrides += [
        *pretrained_teacher,
        "run.progress=false",
        "run.plot=false",
        "run.baseline=false",
        "run.tensorboard=false",
    ]
    config = load_config("quantized", overrides)
    summary = run_job(config, tmp_path / "run", progress=False)
    student, before = summary["student_quantized"], untrained(config)
    assert student["quantized_accuracy"] > before["quantized_accuracy"] + 0.15
    assert student["quantized_nll"] < before["quantized_nll"] - 0.4
    # the stage's evaluation runs the deployed 4-bit weights (forward_params), as extra_metrics does
    assert student["nll"] == pytest.approx(student["quantized_nll"], rel=1e-6)

"""The generic train step: the teacher is frozen, never donated, never optimised; the student learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import TrainConfig
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation, Supervised
from jdistill.train import create_train_state, make_train_step
from jdistill.train.optim import learning_rate_schedule, make_optimizer

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)
TRAIN = TrainConfig(steps=10, warmup_steps=2, learning_rate=1e-2)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.random((8, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 8).astype(np.int32)}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_kd_step_updates_student_and_leaves_teacher_untouched():
    optimizer = make_optimizer(TRAIN)
    graphdef, state = create_train_state(Transformer(CONFIG, rngs=nnx.Rngs(0)), optimizer)
    teacher_graphdef, teacher_params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(1)))
    teacher_before = _leaves(teacher_params)
    student_before = _leaves(state.params)
    step = make_train_step(
        graphdef, KnowledgeDistillation(temperature=2.0), optimizer, seed=0, teacher_graphdef=teacher_graphdef
    )
    new_state, metrics = step(state, teacher_params, _batch())
    new_state, metrics = step(new_state, teacher_params, _batch())  # the first step's learning rate is 0
    assert int(new_state.step) == 2
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, _leaves(teacher_params), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(student_before, _leaves(new_state.params), strict=True))
    assert float(metrics["distill"]) > 0
    assert all(not x.is_deleted() for x in jax.tree.leaves(teacher_params))  # not donated


def test_kd_against_an_identical_teacher_has_zero_distill_loss_and_gradient():
    optimizer = make_optimizer(TRAIN)
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, optimizer)
    teacher_params = jax.tree.map(jnp.copy, state.params)
    recipe = KnowledgeDistillation(temperature=3.0, distill_weight=1.0, label_weight=0.0)
    step = make_train_step(graphdef, recipe, optimizer, seed=0, teacher_graphdef=graphdef)
    _, metrics = step(state, teacher_params, _batch())
    assert abs(float(metrics["distill"])) < 1e-6
    assert float(metrics["grad_norm"]) < 1e-5


def test_supervised_training_reduces_the_loss_on_a_fixed_batch():
    optimizer = make_optimizer(TrainConfig(steps=30, warmup_steps=2, learning_rate=1e-2))
    graphdef, state = create_train_state(Transformer(CONFIG, rngs=nnx.Rngs(0)), optimizer)
    step = make_train_step(graphdef, Supervised(), optimizer, seed=0)
    batch = _batch()
    losses = []
    for _ in range(30):
        state, metrics = step(state, None, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_learning_rate_warms_up_then_decays_to_the_final_fraction():
    schedule = learning_rate_schedule(TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, final_lr_fraction=0.1))
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    assert float(schedule(5)) == pytest.approx(0.5)


def test_weight_decay_skips_vectors():
    config = TrainConfig(learning_rate=1e-9, weight_decay=1e3, warmup_steps=0, grad_clip_norm=None)
    optimizer = make_optimizer(config)
    params = {"matrix": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    state = optimizer.init(params)
    for _ in range(2):  # the schedule's first value is 0
        updates, state = optimizer.update(grads, state, params)
    assert float(jnp.abs(updates["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["matrix"]).max()) > 0.0

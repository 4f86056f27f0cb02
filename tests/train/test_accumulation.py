"""Gradient accumulation normalises by the global token count; remat and the chunked head change nothing."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import TrainConfig
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation, Supervised
from jdistill.train import create_train_state, make_train_step
from jdistill.train.optim import make_optimizer

LM = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=64, max_seq_len=32)
TRAIN = TrainConfig(steps=10, warmup_steps=1, learning_rate=1e-2, batch_size=8)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 64, (8, 13)).astype(np.int32)
    mask = rng.random((8, 12)) > 0.3
    mask[:4, 6:] = False  # rows with very different token counts: per-micro-batch means would be wrong
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _run(recipe, grad_accum_steps, model_config=LM, steps=2):
    optimizer = make_optimizer(TRAIN)
    graphdef, state = create_train_state(Transformer(model_config, rngs=nnx.Rngs(0)), optimizer)
    teacher_graphdef, teacher_params = nnx.split(Transformer(LM, rngs=nnx.Rngs(5)))
    step = make_train_step(
        graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef, grad_accum_steps=grad_accum_steps
    )
    losses = []
    for index in range(steps):
        state, metrics = step(state, teacher_params, _batch(index))
        losses.append(float(metrics["loss"]))
    return losses, [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.mark.parametrize("recipe", [KnowledgeDistillation(label_weight=0.5), Supervised()], ids=["kd", "supervised"])
@pytest.mark.parametrize("micro", [2, 4])
def test_accumulated_step_equals_the_full_batch_step(recipe, micro):
    full_losses, full_params = _run(recipe, 1)
    losses, params = _run(recipe, micro)
    np.testing.assert_allclose(losses, full_losses, rtol=1e-5)
    for a, b in zip(params, full_params, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_step(remat):
    import dataclasses

    base_losses, base_params = _run(KnowledgeDistillation(), 1)
    losses, params = _run(KnowledgeDistillation(), 1, dataclasses.replace(LM, remat=remat))
    np.testing.assert_allclose(losses, base_losses, rtol=1e-6)
    for a, b in zip(params, base_params, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_chunked_head_kd_equals_dense_kd():
    dense_losses, dense_params = _run(KnowledgeDistillation(label_weight=0.3), 1)
    chunked_losses, chunked_params = _run(KnowledgeDistillation(label_weight=0.3, vocab_chunk=16), 1)
    np.testing.assert_allclose(chunked_losses, dense_losses, rtol=1e-5)
    for a, b in zip(chunked_params, dense_params, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_bfloat16_compute_keeps_float32_master_weights():
    import dataclasses

    base_losses, _ = _run(KnowledgeDistillation(), 1)
    losses, params = _run(KnowledgeDistillation(), 1, dataclasses.replace(LM, dtype="bfloat16"))
    assert all(p.dtype == np.float32 for p in params)  # parameters and their updates stay float32
    np.testing.assert_allclose(losses, base_losses, rtol=3e-2)  # bf16 matmuls: ~3 significant digits


def test_a_rematerialised_teacher_traces_and_changes_nothing():
    import dataclasses

    optimizer = make_optimizer(TRAIN)
    losses = []
    for remat in ("none", "full"):
        graphdef, state = create_train_state(Transformer(LM, rngs=nnx.Rngs(0)), optimizer)
        teacher_graphdef, teacher_params = nnx.split(
            Transformer(dataclasses.replace(LM, remat=remat), rngs=nnx.Rngs(5))
        )
        step = make_train_step(graphdef, KnowledgeDistillation(), optimizer, seed=0, teacher_graphdef=teacher_graphdef)
        losses.append(float(step(state, teacher_params, _batch())[1]["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)

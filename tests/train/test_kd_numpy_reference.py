"""An independent check of the whole KD train step: a float64 numpy implementation of a tiny gated LM (GQA,
RoPE, headwise and elementwise gates, two blocks) and of Hinton's KD loss, differentiated by central finite
differences, against the loss the jdistill step reports and the update it applies under `optax.sgd(1.0)`.
(Replaces, in CI, the torch parity check of `tests/bench`, which skips without torch.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation
from jdistill.train import create_train_state, make_train_step
from tests.numpy_transformer import hinton_kd_loss, lm_logits, randomize

STUDENT = ModelConfig(
    kind="lm",
    num_layers=2,
    d_model=8,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    mlp_dim=16,
    vocab_size=12,
    max_seq_len=16,
    attention_impl="xla",
)
TEACHER = ModelConfig(
    kind="lm",
    num_layers=1,
    d_model=12,
    num_heads=3,
    mlp_dim=16,
    vocab_size=12,
    max_seq_len=16,
    gate="elementwise",
    attention_impl="xla",
)
KD = {"temperature": 2.0, "distill_weight": 0.8, "label_weight": 0.4}


def _model(config, seed):
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))
    pure = randomize(nnx.to_pure_dict(state), np.random.default_rng(seed), scale=0.5)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return graphdef, state, jax.tree.map(lambda x: np.asarray(x, np.float64), pure)


def _batch():
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 12, (2, 7)).astype(np.int32)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]], bool)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


@pytest.fixture(scope="module")
def step_result():
    graphdef, state_params, student = _model(STUDENT, 0)
    teacher_graphdef, teacher_params, teacher = _model(TEACHER, 1)
    optimizer = optax.sgd(1.0)
    _, state = create_train_state(nnx.merge(graphdef, state_params), optimizer)
    before = nnx.to_pure_dict(jax.tree.map(np.asarray, state.params))
    step = make_train_step(graphdef, KnowledgeDistillation(**KD), optimizer, seed=0, teacher_graphdef=teacher_graphdef)
    state, metrics = step(state, teacher_params, _batch())
    after = nnx.to_pure_dict(state.params)
    grad = jax.tree.map(lambda b, a: b - np.asarray(a, np.float64), before, after)
    return student, teacher, float(metrics["loss"]), grad


def _numpy_loss(student, teacher, batch):
    return hinton_kd_loss(
        lm_logits(student, batch["inputs"], STUDENT),
        lm_logits(teacher, batch["inputs"], TEACHER),
        batch["targets"],
        batch["mask"],
        **KD,
    )


def test_loss_equals_numpy(step_result):
    student, teacher, loss, _ = step_result
    assert loss == pytest.approx(_numpy_loss(student, teacher, _batch()), rel=1e-5)


def test_gradient_equals_float64_finite_differences(step_result):
    student, teacher, _, grad = step_result
    batch = _batch()
    flat_grad = dict(jax.tree_util.tree_leaves_with_path(grad))
    eps = 1e-6
    for path, leaf in jax.tree_util.tree_leaves_with_path(student):
        numeric = np.zeros(leaf.shape)
        for index in np.ndindex(leaf.shape):
            original = leaf[index]
            leaf[index] = original + eps
            plus = _numpy_loss(student, teacher, batch)
            leaf[index] = original - eps
            minus = _numpy_loss(student, teacher, batch)
            leaf[index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        got = flat_grad[path]
        name = jax.tree_util.keystr(path)
        assert np.max(np.abs(numeric)) > 1e-6, name  # every parameter matters here
        np.testing.assert_allclose(got, numeric, rtol=1e-3, atol=2e-5, err_msg=name)

"""The train step applies the gradient of the mean token loss over the whole batch's valid tokens.

With `optax.sgd(1.0)` the parameters move by exactly minus that gradient, and `grad_norm` is its norm. The
gradient here is computed independently: `jax.grad` of (sum over valid tokens of the per-token loss) / (number of
valid tokens), written out with `log_softmax`. The mask counts differ a lot between the two halves of the batch, so
a per-micro-batch mean under gradient accumulation, a missing division by the count, or a division by the
micro-batch count gives a different update. (Adam is nearly invariant to the gradient's scale, so an optimizer
other than SGD would hide a missing `/count`.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation, Supervised
from jdistill.train import create_train_state, make_train_step

LM = ModelConfig(
    kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32, max_seq_len=16, attention_impl="xla"
)
TEMPERATURE, LABEL_WEIGHT = 2.0, 0.3


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, LM.vocab_size, (4, 9)).astype(np.int32)
    mask = np.ones((4, 8), bool)
    mask[:2, 2:] = False  # first micro-batch: 4 valid tokens; second: 16
    mask[3, 5] = False
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _per_token_ce(logits, targets):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]


def _per_token_kd(logits, teacher_logits, targets):
    """Hinton KD per token: T^2 KL(p_t || p_s) at T plus LABEL_WEIGHT * CE."""
    log_ps = jax.nn.log_softmax(logits / TEMPERATURE)
    log_pt = jax.nn.log_softmax(teacher_logits / TEMPERATURE)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return TEMPERATURE**2 * kl + LABEL_WEIGHT * _per_token_ce(logits, targets)


RECIPES = {
    "supervised": (Supervised(), lambda s, t, y: _per_token_ce(s, y)),
    "kd": (KnowledgeDistillation(temperature=TEMPERATURE, label_weight=LABEL_WEIGHT), _per_token_kd),
}


@pytest.fixture(scope="module")
def models():
    student_graphdef, student_params = nnx.split(Transformer(LM, rngs=nnx.Rngs(0)))
    teacher_graphdef, teacher_params = nnx.split(Transformer(LM, rngs=nnx.Rngs(1)))
    return student_graphdef, student_params, teacher_graphdef, teacher_params


def _independent_loss_and_grad(models, per_token, batch):
    graphdef, params, teacher_graphdef, teacher_params = models
    teacher_logits = nnx.merge(teacher_graphdef, teacher_params)(batch["inputs"]).logits
    mask = jnp.asarray(batch["mask"], jnp.float32)

    def mean_loss(params):
        logits = nnx.merge(graphdef, params)(batch["inputs"]).logits
        return jnp.sum(per_token(logits, teacher_logits, batch["targets"]) * mask) / jnp.sum(mask)

    return jax.value_and_grad(mean_loss)(params)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
@pytest.mark.parametrize("name", list(RECIPES))
def test_sgd_step_moves_parameters_by_the_gradient_of_the_mean_token_loss(models, name, grad_accum_steps):
    recipe, per_token = RECIPES[name]
    graphdef, params, teacher_graphdef, teacher_params = models
    batch = _batch()
    loss, grad = _independent_loss_and_grad(models, per_token, batch)

    optimizer = optax.sgd(1.0)
    _, state = create_train_state(nnx.merge(graphdef, params), optimizer)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(
        graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef, grad_accum_steps=grad_accum_steps
    )
    state, metrics = step(state, teacher_params, batch)

    moved = jax.tree.map(lambda b, a: b - np.asarray(a), before, state.params)
    for (path, got), want in zip(jax.tree.leaves_with_path(moved), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(got, np.asarray(want), atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grad)))
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)


def test_the_batch_makes_per_micro_batch_means_differ():
    """Guards the test above: the mean of the two micro-batch means is not the token mean here."""
    mask = _batch()["mask"]
    per_micro = [mask[:2].sum(), mask[2:].sum()]
    assert per_micro[0] != per_micro[1]

"""Adaptive Computation Modules (docs/early_exit.md#adaptive-computation-modules): the exact initial split of a
dense MLP, the distillation and gate objectives, and decoding with a per-token number of learners."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.errors import UserError
from jdistill.models import ModelConfig, Transformer
from jdistill.models import acm as acm_lib
from jdistill.models.dynamic_blocks import fit_adam

LM = ModelConfig(
    kind="lm", num_layers=2, d_model=16, num_heads=2, mlp_dim=32, mlp="glu", activation="silu", mlp_bias=False,
    vocab_size=11, max_seq_len=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    inputs = jax.random.randint(jax.random.key(1), (2, 8), 0, 11)
    mlp_inputs, dense = jax.jit(lambda: acm_lib.dense_targets(model, inputs))()
    return model, inputs, mlp_inputs, dense, acm_lib.init_learners(model, mlp_inputs, 4)


def test_learners_split_the_dense_mlp_exactly_most_important_first(setup):
    model, inputs, mlp_inputs, dense, acm = setup
    mlp = model.blocks[1].mlp
    gate_fn = acm_lib._gate_fn(mlp)
    prefixes, errors = jax.jit(
        lambda acm, x, dense: (
            p := acm_lib.prefix_outputs(acm, 1, x, gate_fn, mlp.order),
            acm_lib.relative_errors(p, dense),
        )
    )(acm, mlp_inputs[1], dense[1])
    np.testing.assert_allclose(prefixes[-1], dense[1], atol=1e-5)  # all learners: the dense layer
    errors = np.asarray(errors.mean(axis=(1, 2)))
    assert errors[0] == pytest.approx(1.0, rel=0.3) and errors[-1] < 1e-8
    assert errors[0] - errors[1] > errors[-2] - errors[-1]  # the first learner holds the most important units
    logits, counts = jax.jit(lambda: acm_lib.forward(model, acm, inputs, 0.5))()  # gates prefer every learner
    assert int(counts.min()) == 4
    np.testing.assert_allclose(logits, jax.jit(lambda: model(inputs).logits)(), atol=1e-5)


def test_distillation_fits_prefixes_and_the_gate_trades_error_for_cost(setup):
    model, _, mlp_inputs, dense, acm = setup
    mlp = model.blocks[0].mlp
    args = (mlp_inputs[0], dense[0], acm_lib._gate_fn(mlp), mlp.order)
    fitted, _ = fit_adam(
        lambda p, batch, rng: (acm_lib.distill_loss(p, 0, *args), {}), acm, [{}], steps=30, learning_rate=3e-3
    )
    distill = jax.jit(lambda p: acm_lib.distill_loss(p, 0, *args))
    assert float(distill(fitted)) < 0.9 * float(distill(acm))
    full = jax.jit(lambda p: acm_lib.relative_errors(acm_lib.prefix_outputs(p, 0, *args[:1], *args[2:]), args[1]))
    errors = np.asarray(full(fitted)).mean(axis=(1, 2))
    assert errors[-1] < 0.01 and errors[1] < float(np.asarray(full(acm)).mean(axis=(1, 2))[1])  # y_N stays near f
    uniform = dict(acm, router_b=jnp.zeros_like(acm["router_b"]))
    grad = jax.jit(lambda lam: jax.grad(lambda p: acm_lib.gate_loss(p, 0, *args, lam=lam)[0])(uniform)["router_b"][0])
    assert float(grad(0.0)[-1]) < 0 < float(grad(0.0)[0])  # no cost: descent raises P(all learners)
    assert float(grad(10.0)[0]) < 0 < float(grad(10.0)[-1])  # costly learners: descent raises P(none)


def test_the_full_prefix_weighs_n_in_the_distillation_loss(setup):
    """Changing only the last learner moves only e_N, so the loss moves by N times its change (w_N = N)."""
    _, _, mlp_inputs, dense, acm = setup
    mlp = setup[0].blocks[0].mlp
    args = (mlp_inputs[0], dense[0], acm_lib._gate_fn(mlp), mlp.order)
    num = acm["down"].shape[1]
    moved = dict(acm, down=acm["down"].at[0, num - 1].add(0.3 * jax.random.normal(jax.random.key(4), (8, 16))))
    loss = jax.jit(lambda p: acm_lib.distill_loss(p, 0, *args))
    errors = jax.jit(lambda p: acm_lib.relative_errors(acm_lib.prefix_outputs(p, 0, *args[:1], *args[2:]), args[1]))
    before, after = np.asarray(errors(acm)).mean(axis=(1, 2)), np.asarray(errors(moved)).mean(axis=(1, 2))
    np.testing.assert_allclose(after[:-1], before[:-1], atol=1e-6)  # every shorter prefix unchanged
    assert after[-1] - before[-1] > 1e-3
    assert float(loss(moved)) - float(loss(acm)) == pytest.approx(num * (after[-1] - before[-1]), rel=1e-3)


def test_a_model_without_a_glu_mlp_is_refused():
    with pytest.raises(UserError, match="block 1 is not attention \\+ a GLU MLP"):
        config = ModelConfig(kind="lm", num_layers=1, d_model=8, num_heads=2, mlp_dim=16, vocab_size=11)
        acm_lib.init_learners(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), None, 2)


@pytest.mark.slow  # a compiled decoder with a learner loop per block: ~10 s on a quiet 2-core machine
def test_decoding_runs_the_chosen_learners_like_the_teacher_forced_pass(setup):
    model, _, _, _, acm = setup
    acm = dict(acm, router_w=3.0 * jax.random.normal(jax.random.key(2), acm["router_w"].shape))
    prompt = jax.random.randint(jax.random.key(3), (1, 4), 0, 11)
    tokens, used = acm_lib.generate_with_acm(model, acm, prompt, max_new_tokens=8)
    assert len(set(np.asarray(used).ravel().tolist())) >= 3  # the gates pick different numbers of learners
    sequence = jnp.concatenate([prompt, tokens], axis=1)
    logits, counts = jax.jit(lambda: acm_lib.forward(model, acm, sequence, 0.5))()
    np.testing.assert_array_equal(np.asarray(counts)[:, 0, 4:-1].T, used)
    np.testing.assert_array_equal(np.asarray(tokens)[0, 1:], np.argmax(logits[0, 4:-1], axis=-1))

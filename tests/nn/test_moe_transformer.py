"""Mixture-of-experts blocks in the Transformer: which blocks, the aux entries, remat, decoding, config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import Transformer
from jdistill.models.config import ModelConfig
from jdistill.nn.moe import MoE
from tests.nn.test_moe import random_module

MOE = ModelConfig(
    kind="lm",
    num_layers=3,
    d_model=16,
    num_heads=2,
    mlp_dim=24,
    mlp="glu",
    activation="silu",
    mlp_bias=False,
    gate="none",
    vocab_size=32,
    max_seq_len=16,
    head_bias=False,
    num_experts=4,
    experts_per_token=2,
    moe_mlp_dim=8,
    shared_expert_dim=12,
    dense_layers=(1,),
)


def test_which_blocks_are_moe():
    config = dataclasses.replace(MOE, num_layers=6, moe_every=2, dense_layers=(3,))
    assert [config.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]
    assert config.num_moe_layers == 2
    assert not any(dataclasses.replace(config, num_experts=0).is_moe_layer(i) for i in range(6))
    model = nnx.eval_shape(lambda: Transformer(dataclasses.replace(MOE, shared_expert_dim=0), rngs=nnx.Rngs(0)))
    assert [isinstance(block.mlp, MoE) for block in model.blocks] == [True, False, True]
    assert model.blocks[0].mlp.w_gate.shape == (4, 16, 8) and model.blocks[1].mlp.up.kernel.shape == (16, 24)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(experts_per_token=5), "experts_per_token"),
        (dict(experts_per_token=0), "experts_per_token"),
        (dict(dense_layers=(3,)), "dense_layers"),
        (dict(dense_layers=(2, 1)), "dense_layers"),
        (dict(moe_every=0), "moe_every"),
        (dict(num_experts=-1), "num_experts"),
        (dict(mlp="dense"), "mlp"),
        (dict(moe_dispatch="dense"), "moe_dispatch"),
    ],
)
def test_invalid_moe_fields_are_named(changes, field):
    assert field in [name for name, _ in dataclasses.replace(MOE, **changes).validate()]


def test_valid_config_and_dense_config_have_no_problems():
    assert MOE.validate() == []
    assert dataclasses.replace(MOE, num_experts=0, experts_per_token=9, mlp="dense").validate() == []


def _model(config=MOE, seed=0):
    return random_module(lambda: Transformer(config, rngs=nnx.Rngs(0)), seed)


@nnx.jit
def _aux_and_recomputed(model, tokens):
    """The model's aux, and each MoE block's statistics recomputed from its input (the residual after attention)."""
    out = model(tokens, return_hidden_states=True)
    per_layer = []
    for i in (0, 2):
        block, h = model.blocks[i], out.hidden_states[i]
        h = h + block.attention(block.attention_norm(h))
        per_layer.append(block.mlp(block.mlp_norm(h))[1])
    return out.aux, per_layer


def test_aux_holds_the_mean_of_the_moe_blocks_statistics():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 7)), jnp.int32)
    aux, per_layer = _aux_and_recomputed(_model(), tokens)
    for key in ("load_balancing_loss", "router_z_loss"):
        np.testing.assert_allclose(aux["moe_" + key], np.mean([s[key] for s in per_layer]), rtol=1e-5)
    np.testing.assert_array_equal(aux["moe_tokens_per_expert"], np.stack([s["tokens_per_expert"] for s in per_layer]))
    assert aux["moe_tokens_per_expert"].shape == (2, 4) and float(aux["moe_tokens_per_expert"].sum()) == 2 * 14 * 2
    assert 2.0 < float(aux["moe_load_balancing_loss"]) < 4.0  # between k (balanced) and E (collapsed)


@pytest.mark.slow
def test_remat_gives_the_same_values_aux_and_gradients():
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 7)), jnp.int32)

    def loss(model):
        out = model(tokens)
        return jnp.mean(out.logits**2) + out.aux["moe_load_balancing_loss"] + out.aux["moe_router_z_loss"]

    values = []
    for remat in ("none", "full"):
        model = _model(dataclasses.replace(MOE, remat=remat))
        values.append(nnx.jit(lambda m: (loss(m), nnx.grad(loss)(m)))(model))
    (loss_a, grads_a), (loss_b, grads_b) = values
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    router_grad = grads_a["blocks"][0]["mlp"]["router"][...]
    assert np.abs(np.asarray(router_grad)).max() > 0  # the aux losses reach the router
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_decoding_matches_the_full_forward():  # fast coverage: tests/hf/test_moe_checkpoint.py's greedy generation
    model = _model(seed=2)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 32, (2, 6)), jnp.int32)
    logits = nnx.jit(lambda m, t: m(t).logits)(model, tokens)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    stepped, caches = nnx.jit(lambda m, t, p: m.decode(t, positions=p, caches=m.init_cache(2, 8)))(
        model, tokens[:, :4], positions[:, :4]
    )
    last, _ = nnx.jit(lambda m, t, p, c: m.decode(t, positions=p, caches=c))(
        model, tokens[:, 4:], positions[:, 4:], caches
    )
    np.testing.assert_allclose(np.concatenate([stepped, last], axis=1), logits, atol=1e-5)

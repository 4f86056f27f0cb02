"""LayerSkip objectives against numpy implementations of the paper's formulas and their limiting cases, layer
dropout in the model, and the recipe's training signal (early exits become usable only with it)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill import losses
from jdistill.losses.early_exit import active_exits, curriculum_mask, exit_scales, max_active_exits
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.layerskip import LayerSkip
from jdistill.recipes.supervised import Supervised


def test_exit_scales_follow_the_papers_formula():
    # e(l) = e_scale * sum_{i<=l} i for l < L-1; e(L-1) = L-1 + e_scale * sum_{i<=L-2} i
    np.testing.assert_allclose(exit_scales(4, 0.5), [0.0, 0.5, 1.5, 3 + 0.5 * 3])
    np.testing.assert_allclose(exit_scales(5, 2.0), [0.0, 2.0, 6.0, 12.0, 4 + 2.0 * 6])
    np.testing.assert_allclose(losses.exit_weights(1, 0, e_scale=1.0, curriculum="rotational"), [1.0])  # one layer


def test_curricula():
    np.testing.assert_array_equal(curriculum_mask(5, 0, curriculum="rotational", rotation=2), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(curriculum_mask(5, 3, curriculum="rotational", rotation=2), [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(curriculum_mask(6, 4, curriculum="rotational", rotation=3), [0, 1, 0, 0, 1, 1])
    # gradual over T_C = 10 steps: l > ceil(L - 1 - t / T_C * L)
    np.testing.assert_array_equal(curriculum_mask(4, 0, curriculum="gradual", gradual_steps=10), [0, 0, 0, 1])
    np.testing.assert_array_equal(curriculum_mask(4, 5, curriculum="gradual", gradual_steps=10), [0, 0, 1, 1])
    np.testing.assert_array_equal(curriculum_mask(4, 8, curriculum="gradual", gradual_steps=10), [0, 1, 1, 1])
    np.testing.assert_array_equal(curriculum_mask(4, 10, curriculum="gradual", gradual_steps=10), [1, 1, 1, 1])
    np.testing.assert_array_equal(curriculum_mask(4, 7, curriculum="none"), [1, 1, 1, 1])


def test_exit_weights_normalise_and_e_scale_zero_is_plain_training():
    weights = np.asarray(losses.exit_weights(4, 1, e_scale=1.0, curriculum="rotational", rotation=2))
    expected = np.array([0.0, 1.0, 0.0, 6.0])  # layers 1 and 3 on at t = 1; e = [0, 1, 3, 6]
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-6)
    np.testing.assert_allclose(losses.exit_weights(4, 0, e_scale=0.0, curriculum="none"), [0, 0, 0, 1])


def test_layer_dropout_rates_rise_with_depth_and_time():
    rates = np.asarray(losses.layer_dropout_rates(5, 0, 100, p_max=0.2))
    depth = np.exp(np.arange(5) * np.log(2) / 4) - 1
    np.testing.assert_allclose(rates, 0.2 * depth, rtol=1e-6)
    assert rates[0] == 0 and abs(rates[-1] - 0.2) < 1e-6
    np.testing.assert_allclose(losses.layer_dropout_rates(5, 0, 100, p_max=0.2, schedule="exponential"), 0, atol=1e-7)
    np.testing.assert_allclose(losses.layer_dropout_rates(5, 99, 100, p_max=0.2, schedule="exponential"), rates, 1e-5)
    keep = np.asarray(losses.layer_keep_mask(jax.random.key(0), 20000, jnp.asarray(rates)))
    np.testing.assert_allclose(1 - keep.mean(0), rates, atol=0.01)


def _reference_loss(normed, head, bias, labels, weights, mask):
    logits = normed.astype(np.float64) @ head + bias
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, np.broadcast_to(labels, log_p.shape[:-1])[..., None], -1)[..., 0]
    return float(np.sum(weights[:, None, None] * ce * mask[None])), float(mask.sum())


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_early_exit_loss_equals_the_dense_formula_at_any_chunking(chunk_size):
    rng = np.random.default_rng(0)
    layers, batch, seq, d, vocab = 3, 2, 9, 8, 11
    normed = rng.normal(size=(layers, batch, seq, d)).astype(np.float32)
    head = rng.normal(size=(d, vocab)).astype(np.float32)
    bias = rng.normal(size=vocab).astype(np.float32)
    labels = rng.integers(0, vocab, (batch, seq))
    mask = (rng.random((batch, seq)) > 0.3).astype(np.float32)
    weights = np.array([0.2, 0.3, 0.5], np.float32)
    total, count = losses.early_exit_loss(normed, head, labels, weights, mask=mask, bias=bias, chunk_size=chunk_size)
    want_total, want_count = _reference_loss(normed, head, bias, labels, weights, mask)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
    assert float(count) == want_count

    def dense(normed, head):
        logits = jnp.einsum("lbsd,dv->lbsv", normed, head) + bias
        ce = -jnp.take_along_axis(
            jax.nn.log_softmax(logits), jnp.broadcast_to(labels, logits.shape[:-1])[..., None], -1
        )
        return jnp.sum(weights[:, None, None] * ce[..., 0] * mask)

    def chunked(normed, head):
        return losses.early_exit_loss(normed, head, labels, weights, mask=mask, bias=bias, chunk_size=chunk_size)[0]

    for got, want in zip(jax.grad(chunked, (0, 1))(normed, head), jax.grad(dense, (0, 1))(normed, head), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


LM = ModelConfig(kind="lm", num_layers=3, d_model=16, num_heads=2, mlp_dim=32, vocab_size=13, max_seq_len=16)


def test_layer_keep_skips_blocks_per_row():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 13)
    everything = model(tokens, return_hidden_states=True)
    kept = model(tokens, layer_keep=jnp.ones((2, 3), bool))
    np.testing.assert_array_equal(kept.logits, everything.logits)
    # Row 0 skips block 1 (0-based); row 1 runs everything.
    keep = jnp.array([[True, False, True], [True, True, True]])
    skipped = model(tokens, layer_keep=keep, return_hidden_states=True)
    np.testing.assert_array_equal(skipped.hidden_states[2][0], skipped.hidden_states[1][0])
    np.testing.assert_array_equal(skipped.logits[1], everything.logits[1])
    h = everything.hidden_states[1][:1]
    h = model.blocks[2](h, positions=None)
    np.testing.assert_allclose(skipped.logits[:1], model._logits(model.final_norm(h)), atol=1e-6)
    none = model(tokens, layer_keep=jnp.zeros((2, 3), bool))
    np.testing.assert_allclose(none.logits, model._logits(model.final_norm(model.embed(tokens))), atol=1e-6)


def _batch(seed, batch=8, seq=12):
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 13, (batch, 1))
    stream = (start + 5 * np.arange(seq + 1)[None, :]) % 13  # next token = token + 5 (mod 13)
    return {
        "inputs": jnp.asarray(stream[:, :-1]),
        "targets": jnp.asarray(stream[:, 1:]),
        "mask": jnp.ones((batch, seq), bool),
        "epoch": jnp.asarray(0.0),
    }


def test_without_dropout_and_e_scale_zero_the_loss_is_supervised_cross_entropy():
    model = Transformer(LM, rngs=nnx.Rngs(2))
    batch = _batch(0)
    plain = LayerSkip(p_max=0.0, e_scale=0.0, curriculum="none", total_steps=10, steps_per_epoch=10.0)
    (total, count), metrics, _ = plain.loss(model, None, (), batch, jax.random.key(0))
    (want, want_count), _, _ = Supervised().loss(model, None, (), batch, jax.random.key(0))
    np.testing.assert_allclose(total, want, rtol=1e-5)
    assert float(count) == float(want_count) and float(metrics["layers_kept"]) == 1.0


def _exit_ce(model, batch, layer):
    hidden = model(batch["inputs"], return_hidden_states=True).hidden_states[layer]
    logits = model._logits(model.final_norm(hidden))
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean())


def _train(recipe, steps=120):
    model = Transformer(LM, rngs=nnx.Rngs(3))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch, key):
        def loss_fn(model):
            (total, count), _, _ = recipe.loss(model, None, (), batch, key)
            return total / count

        optimizer.update(model, nnx.grad(loss_fn)(model))

    for t in range(steps):
        step(model, optimizer, dict(_batch(t), epoch=jnp.asarray(t / steps)), jax.random.key(t))
    return model


@pytest.mark.slow  # trains two models; the loss itself is pinned by the weighted-sum test
def test_layerskip_makes_the_first_exit_a_usable_prediction():
    # No layer dropout: the early-exit loss alone must do it (dropout alone also helps a little).
    layerskip = LayerSkip(p_max=0.0, e_scale=1.0, curriculum="none", total_steps=120, steps_per_epoch=120.0)
    plain = dataclasses.replace(layerskip, p_max=0.0, e_scale=0.0)
    held_out = _batch(999)
    trained, baseline = _train(layerskip), _train(plain)
    assert _exit_ce(trained, held_out, 3) < 0.5  # the full model learns the rule either way
    assert _exit_ce(baseline, held_out, 3) < 0.5
    # Block 2's output through the shared head (weight e(1) = 1 of e = [0, 1, 3]; e(0) = 0 in the paper's
    # scale, so block 1 gets no loss of its own): trained for it by the early-exit loss only.
    assert _exit_ce(trained, held_out, 2) < 0.3 * _exit_ce(baseline, held_out, 2)


@pytest.mark.parametrize("epoch, on", [(0.3, [0.0, 1.0, 1.0]), (0.4, [0.0, 0.0, 1.0])])
def test_the_recipe_loss_is_the_weighted_sum_of_every_layers_cross_entropy(epoch, on):
    model = Transformer(LM, rngs=nnx.Rngs(4))
    batch = dict(_batch(5), epoch=jnp.asarray(epoch))  # step 3 / 4 of 10: rotational curriculum, both phases
    recipe = LayerSkip(
        p_max=0.0, e_scale=2.0, curriculum="rotational", rotation=2, total_steps=10, steps_per_epoch=10.0
    )
    (total, count), metrics, _ = recipe.loss(model, None, (), batch, jax.random.key(0))
    hidden = model(batch["inputs"], return_hidden_states=True).hidden_states
    e = np.array([0.0, 2.0, 2 + 2.0 * 1])  # e_scale * [0, 1] and L - 1 + e_scale * sum_{i<=1} i
    weights = np.array(on) * e
    weights /= weights.sum()
    per_layer = [
        float(
            optax.softmax_cross_entropy_with_integer_labels(model._logits(model.final_norm(h)), batch["targets"]).sum()
        )
        for h in hidden[1:]
    ]
    np.testing.assert_allclose(float(total), float(np.dot(weights, per_layer)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ce"]), per_layer[-1] / batch["targets"].size, rtol=1e-5)
    assert float(count) == batch["targets"].size


def test_only_the_layers_with_a_weight_go_through_the_head():
    # e(0) = 0 and the rotational curriculum turns on every R-th layer plus the last: 8 layers, R = 2 -> at most 4
    # of the 8 layers' logits are formed per step (phase 0: 2, 4, 6, 7; phase 1: 1, 3, 5, 7).
    assert max_active_exits(8, e_scale=1.0, curriculum="rotational", rotation=2) == 4
    assert max_active_exits(8, e_scale=1.0, curriculum="rotational", rotation=4) == 3
    assert max_active_exits(8, e_scale=1.0, curriculum="none") == 7
    assert max_active_exits(8, e_scale=0.0, curriculum="gradual") == 1  # plain training: the last only
    for step in range(4):
        weights = losses.exit_weights(8, step, e_scale=1.0, curriculum="rotational", rotation=2)
        active = np.asarray(active_exits(weights, 4))
        assert active[0] == 7  # the last layer first (its CE is the `ce` metric)
        assert set(active) == set(np.flatnonzero(np.asarray(weights) > 0))
    weights = losses.exit_weights(8, 0, e_scale=0.0, curriculum="none")
    np.testing.assert_array_equal(np.asarray(active_exits(weights, 3))[:1], [7])

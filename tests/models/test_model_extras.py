"""Attention-sink statistics, multi-exit heads, and feature capture by layer path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models.capture import capture
from jdistill.nn.attention_stats import first_token_attention_share

LM = ModelConfig(kind="lm", num_layers=3, d_model=32, num_heads=4, mlp_dim=64, vocab_size=40)


def test_stats_have_one_value_per_layer_and_are_in_range():
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 40)
    aux = Transformer(LM, rngs=nnx.Rngs(0))(tokens, return_stats=True).aux
    assert set(aux) == {"first_token_share", "max_activation", "mean_gate"}
    for value in aux.values():
        assert value.shape == (LM.num_layers,)
    assert np.all((aux["first_token_share"] > 0) & (aux["first_token_share"] < 1))
    assert np.all((aux["mean_gate"] > 0) & (aux["mean_gate"] < 1))
    ungated = Transformer(dataclasses.replace(LM, gate="none"), rngs=nnx.Rngs(0))(tokens, return_stats=True).aux
    assert "mean_gate" not in ungated
    assert Transformer(LM, rngs=nnx.Rngs(0))(tokens).aux == {}


def test_first_token_share_matches_numpy():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 5, 2, 4)), rng.normal(size=(2, 5, 2, 4))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(first_token_attention_share(q, k, causal=True), weights[..., 1:, 0].mean(), rtol=1e-5)


def test_truncating_above_an_exit_leaves_its_output_unchanged():
    config = dataclasses.replace(LM, exit_layers=(1, 2, 3))
    deep = Transformer(config, rngs=nnx.Rngs(0))
    shallow = Transformer(dataclasses.replace(config, num_layers=2, exit_layers=(1, 2)), rngs=nnx.Rngs(0))
    _, deep_state = nnx.split(deep)
    shallow_graph, shallow_state = nnx.split(shallow)
    flat_deep = dict(nnx.to_flat_state(deep_state))
    for path, variable in nnx.to_flat_state(shallow_state):
        source = flat_deep[path]
        variable[...] = source[...] if source.shape == variable.shape else source[...][:3]
    shallow = nnx.merge(shallow_graph, shallow_state)
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 40)
    deep_exits, shallow_exits = deep(tokens).exits, shallow(tokens).exits
    assert len(deep_exits) == 3 and len(shallow_exits) == 2
    for a, b in zip(deep_exits[:2], shallow_exits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_classifier_exits_are_pooled():
    config = ModelConfig(kind="classifier", num_layers=2, d_model=16, num_heads=2, mlp_dim=32, exit_layers=(1,))
    exits = Transformer(config, rngs=nnx.Rngs(0))(jnp.ones((3, 8, 8, 1))).exits
    assert [e.shape for e in exits] == [(3, 10)]


def test_bad_exit_layers_are_rejected():
    assert ("exit_layers", "increasing block numbers in [1, num_layers=3]") in dataclasses.replace(
        LM, exit_layers=(0, 2)
    ).validate()


def test_capture_by_layer_path_inside_jit_and_restores_the_model():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 40)
    graphdef, state = nnx.split(model)

    @jax.jit
    def features(state, tokens):
        merged = nnx.merge(graphdef, state)
        with capture(merged, ["blocks.0.mlp", "blocks.2"]) as captured:
            output = merged(tokens, return_hidden_states=True)
        return captured, output

    captured, output = features(state, tokens)
    assert captured["blocks.0.mlp"].shape == (2, 6, 32)
    np.testing.assert_allclose(captured["blocks.2"], output.hidden_states[3], atol=1e-6)
    assert type(model.blocks[0].mlp).__name__ == "MLP"
    with capture(model, ["blocks.1.attention"]):
        pass
    assert not hasattr(model.blocks[1].attention, "_capture_sink")
    with pytest.raises(ValueError, match=r"layer path 'blocks\.7': List has no '7'"), capture(model, ["blocks.7"]):
        pass


def test_residual_gates_start_open_and_report_their_sparsity_loss():
    config = dataclasses.replace(LM, residual_gates=True)
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, 40)
    aux = model(tokens).aux
    gates = aux["residual_gates"]
    assert len(gates) == 2 * config.num_layers and gates[0].shape == (2, 7, config.d_model)
    np.testing.assert_allclose(np.mean([g.mean() for g in gates]), jax.nn.sigmoid(5.0), atol=0.01)
    np.testing.assert_allclose(aux["gate_sparsity_loss"], 0.01 * np.mean([np.mean(g**2) for g in gates]), rtol=1e-5)
    caches = model.init_cache(2, 7)
    logits, _ = model.decode(tokens, positions=jnp.broadcast_to(jnp.arange(7), (2, 7)), caches=caches)
    np.testing.assert_allclose(logits, model(tokens).logits, atol=1e-5)


def test_gateskip_budget_skips_about_that_fraction_and_zero_budget_is_exact():
    model = Transformer(dataclasses.replace(LM, residual_gates=True), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(4), (4, 10), 0, 40)
    full = model(tokens).logits
    np.testing.assert_allclose(model(tokens, skip_budget=0.0).logits, full, atol=1e-6)
    skipped = model(tokens, skip_budget=0.5).logits
    assert not np.allclose(skipped, full, atol=1e-4)


def test_sliding_window_limits_attention_in_forward_and_decoding():
    config = dataclasses.replace(LM, sliding_window=3)
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(5), (2, 10), 0, 40)
    changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % 40)
    # one layer reaches 2 positions back, so after 3 layers position 0 is out of reach from position >= 7
    np.testing.assert_allclose(model(tokens).logits[:, 7:], model(changed).logits[:, 7:], atol=1e-6)
    assert not np.allclose(model(tokens).logits[:, 2], model(changed).logits[:, 2], atol=1e-6)
    caches = model.init_cache(2, 10)
    logits, _ = model.decode(tokens, positions=jnp.broadcast_to(jnp.arange(10), (2, 10)), caches=caches)
    np.testing.assert_allclose(logits, model(tokens).logits, atol=1e-5)


def test_token_classifier():
    config = ModelConfig(
        kind="classifier",
        classifier_input="tokens",
        num_layers=1,
        d_model=16,
        num_heads=2,
        mlp_dim=32,
        vocab_size=30,
        max_seq_len=12,
        num_classes=3,
    )
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(6), (5, 12), 0, 30)
    assert model(tokens).logits.shape == (5, 3)
    assert not np.allclose(model(tokens).logits, model(tokens.at[:, -1].set(0)).logits)


def test_capturing_a_module_the_forward_pass_does_not_call_says_so():
    import jax.numpy as jnp
    import pytest
    from flax import nnx

    from jdistill.models import ModelConfig, Transformer
    from jdistill.models.capture import capture

    model = Transformer(
        ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32), rngs=nnx.Rngs(0)
    )
    with capture(model, ["blocks.0.mlp", "blocks.0.mlp.up"]) as features:
        model(jnp.zeros((1, 4), jnp.int32))
    assert features["blocks.0.mlp"].shape == (1, 4, 16)
    with pytest.raises(KeyError, match="recorded nothing"):
        features["blocks.0.mlp.up"]

"""KV-cache decoding equals the full forward; batched rows of different lengths; sampling filters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import filter_logits, generate

LM = ModelConfig(
    kind="lm",
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    vocab_size=50,
    gate="headwise",
    qk_norm=True,
    rotary_fraction=0.5,
)


HYBRID = dataclasses.replace(LM, num_layers=3, layer_pattern="DDA", linear_key_head_dim=8, linear_value_head_dim=8)


@pytest.mark.parametrize(
    "gate, position, pattern",
    [
        ("headwise", "sdpa_output", "A"),
        ("elementwise", "value", "A"),
        ("none", "sdpa_output", "A"),
        ("headwise", "sdpa_output", "DA"),
        ("headwise", "sdpa_output", "RA"),
    ],
)
def test_cached_decoding_equals_full_forward(gate, position, pattern):
    config = dataclasses.replace(LM, gate=gate, gate_position=position, layer_pattern=pattern)
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 50)
    full = model(tokens).logits
    caches = model.init_cache(2, 9)
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    prefix_logits, caches = model.decode(tokens[:, :5], positions=positions, caches=caches)
    np.testing.assert_allclose(prefix_logits, full[:, :5], atol=1e-5)
    for t in range(5, 9):
        step_logits, caches = model.decode(tokens[:, t : t + 1], positions=jnp.full((2, 1), t), caches=caches)
        np.testing.assert_allclose(step_logits[:, 0], full[:, t], atol=2e-5)


def test_greedy_generation_extends_the_argmax_of_the_full_forward():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(2), (2, 6), 0, 50)
    generated = generate(model, prompt, max_new_tokens=5)
    sequence = prompt
    for step in range(5):
        next_token = jnp.argmax(model(sequence).logits[:, -1], axis=-1)
        np.testing.assert_array_equal(generated[:, step], next_token)
        sequence = jnp.concatenate([sequence, next_token[:, None]], axis=1)


@pytest.mark.parametrize("config", [LM, HYBRID], ids=["attention", "hybrid_deltanet"])
def test_rows_of_different_lengths_decode_as_if_alone(config):
    model = Transformer(config, rngs=nnx.Rngs(0))
    prompts = np.asarray(jax.random.randint(jax.random.key(3), (3, 8), 0, 50))
    lengths = np.array([8, 3, 5])
    padded = prompts.copy()
    for row, length in enumerate(lengths):
        padded[row, length:] = 0
    together = generate(model, padded, lengths, max_new_tokens=4)
    for row, length in enumerate(lengths):
        alone = generate(model, prompts[row : row + 1, :length], max_new_tokens=4)
        np.testing.assert_array_equal(together[row], alone[0])


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert np.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert np.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_sampling_respects_top_k_and_temperature_zero_is_greedy():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(4), (4, 5), 0, 50)
    greedy = generate(model, prompt, max_new_tokens=3)
    top1 = generate(model, prompt, max_new_tokens=3, temperature=1.0, top_k=1, rng=jax.random.key(5))
    np.testing.assert_array_equal(greedy, top1)
    a = generate(model, prompt, max_new_tokens=6, temperature=1.0, rng=jax.random.key(6))
    b = generate(model, prompt, max_new_tokens=6, temperature=1.0, rng=jax.random.key(6))
    c = generate(model, prompt, max_new_tokens=6, temperature=1.0, rng=jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

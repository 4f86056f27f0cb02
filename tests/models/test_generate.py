"""KV-cache decoding equals the full forward; batched rows of different lengths; sampling filters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import completion_mask, filter_logits, generate, sample_completions

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


def _greedy_alone(model, tokens, new_tokens, eos_id=None, pad_id=None):
    """The no-cache reference: the argmax of the full forward of the row alone, one token at a time (the row is
    zero-filled to a fixed width after its end, which a causal model never reads, so the forward compiles once)."""
    graphdef, params = nnx.split(model)
    width = len(tokens) + new_tokens
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x).logits[0])
    sequence, out = list(tokens), []
    for _ in range(new_tokens):
        if eos_id is not None and eos_id in out:
            out.append(eos_id if pad_id is None else pad_id)
            continue
        logits = forward(params, jnp.asarray([sequence + [0] * (width - len(sequence))]))
        out.append(int(jnp.argmax(logits[len(sequence) - 1])))
        sequence.append(out[-1])
    return out


def _left_padded(rows, width, filler):
    """Rows of different lengths left-padded to `width` with `filler` tokens, and their mask."""
    prompt = np.stack([np.concatenate([filler[: width - len(row)], row]) for row in rows]).astype(np.int32)
    mask = np.arange(width)[None, :] >= width - np.array([len(row) for row in rows])[:, None]
    return prompt, mask


def test_left_padded_ragged_prompts_with_eos_match_the_no_cache_reference():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    rows = [np.asarray(jax.random.randint(jax.random.key(10 + i), (n,), 1, 50)) for i, n in enumerate([7, 2, 4])]
    free = [_greedy_alone(model, row, 6) for row in rows]
    eos_id = free[1][2]  # row 1 stops at its third token or earlier, the others wherever that token appears
    stop = free[1].index(eos_id)
    prompt, mask = _left_padded(rows, 7, np.full(7, 3))
    tokens = np.asarray(generate(model, prompt, prompt_mask=mask, max_new_tokens=6, eos_id=eos_id, pad_id=49))
    for index, row in enumerate(rows):
        np.testing.assert_array_equal(tokens[index], _greedy_alone(model, row, 6, eos_id, pad_id=49))
    assert tokens[1, stop] == eos_id and (tokens[1, stop + 1 :] == 49).all()
    real = np.asarray(completion_mask(tokens, eos_id))
    assert real[1].tolist() == [i <= stop for i in range(6)]
    assert (tokens[~real] == 49).all()


@pytest.mark.parametrize("config", [LM, HYBRID], ids=["attention", "hybrid_deltanet"])
def test_padding_does_not_change_a_rows_output(config):
    model = Transformer(config, rngs=nnx.Rngs(0))
    rows = [np.asarray(jax.random.randint(jax.random.key(20 + i), (n,), 0, 50)) for i, n in enumerate([5, 3])]
    junk = np.asarray(jax.random.randint(jax.random.key(30), (9,), 0, 50))  # pad tokens are never attended
    prompt, mask = _left_padded(rows, 5, junk)
    narrow = generate(model, prompt, prompt_mask=mask, max_new_tokens=4)
    wide, wide_mask = _left_padded(rows, 9, junk[::-1])
    wide_out = generate(model, wide, prompt_mask=wide_mask, max_new_tokens=4)
    np.testing.assert_array_equal(narrow, wide_out)
    for index, row in enumerate(rows):
        np.testing.assert_array_equal(wide_out[index], generate(model, row[None], max_new_tokens=4)[0])
    # inside a jitted step (what GKD calls): traced lengths, so recurrent models prefill only the first token
    graphdef, params = nnx.split(model)
    traced = jax.jit(
        lambda params, prompt, mask: sample_completions(
            nnx.merge(graphdef, params), prompt, mask, max_new_tokens=4, rng=jax.random.key(0)
        )
    )(params, wide, wide_mask)
    np.testing.assert_array_equal(traced, wide_out)


def test_exactly_max_new_tokens_with_one_decode_step_fewer_and_early_stop_when_all_rows_end(monkeypatch):
    model = Transformer(LM, rngs=nnx.Rngs(0))
    calls = []
    decode = Transformer.decode

    def counted(self, tokens, **kwargs):
        jax.debug.callback(lambda: calls.append(tokens.shape[1]))
        return decode(self, tokens, **kwargs)

    monkeypatch.setattr(Transformer, "decode", counted)
    jax.clear_caches()  # trace generate afresh, with the counting decode
    prompt = jax.random.randint(jax.random.key(40), (2, 5), 0, 50)
    tokens = generate(model, prompt, max_new_tokens=4)
    assert tokens.shape == (2, 4) and calls == [5, 1, 1, 1]  # the prefill, then 3 steps: no wasted 4th decode
    calls.clear()
    first = int(tokens[0, 0])
    prompt = jnp.stack([prompt[0], prompt[0]])  # both rows emit `first` at once: nothing left to decode
    stopped = generate(model, prompt, max_new_tokens=4, eos_id=first, pad_id=0)
    assert calls == [5] and stopped.tolist() == [[first, 0, 0, 0]] * 2


def test_prompts_of_other_lengths_reuse_the_compiled_loop():
    from jdistill.models.generate import _generate

    model = Transformer(LM, rngs=nnx.Rngs(0))
    prompt = np.asarray(jax.random.randint(jax.random.key(50), (2, 6), 0, 50))
    generate(model, prompt, [6, 2], max_new_tokens=3)
    compiled = _generate._cache_size()
    generate(model, prompt, [3, 5], max_new_tokens=3)  # other lengths: the same program (no static prefill length)
    generate(model, prompt, prompt_mask=np.arange(6)[None, :] >= np.array([[1], [4]]), max_new_tokens=3)
    assert _generate._cache_size() == compiled

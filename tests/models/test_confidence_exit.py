"""Confidence exits: the confidence measures and threshold calibration against numpy, classifier exits against
the full forward's exits, and per-token LM exits against the full forward with the same (position, block) skips."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.errors import UserError
from jdistill.models import ModelConfig, Transformer
from jdistill.models.confidence_exit import (
    calibrate_threshold,
    classify_with_exits,
    confidence,
    exit_index,
    generate_with_exits,
)
from jdistill.models.generate import generate


def test_confidence_measures():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.5, -1.0]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(confidence(logits, "max_prob"), p.max(-1), rtol=1e-6)
    entropy = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(confidence(logits, "entropy"), 1 - entropy / np.log(4), rtol=1e-5, atol=1e-6)
    assert abs(float(confidence(logits, "entropy")[0])) < 1e-6  # uniform: 0


def test_exit_index_takes_the_first_confident_exit_and_the_final_head_otherwise():
    confidences = jnp.array([[0.2, 0.9, 0.5], [0.95, 0.1, 0.6], [0.0, 0.0, 0.0]])  # [exits, examples]
    np.testing.assert_array_equal(exit_index(confidences, 0.8), [1, 0, 2])
    np.testing.assert_array_equal(exit_index(confidences, 0.0), [0, 0, 0])
    np.testing.assert_array_equal(exit_index(confidences, 1.01), [2, 2, 2])


def test_calibration_picks_the_cheapest_threshold_within_the_accuracy_budget():
    rng = np.random.default_rng(0)
    exits, n, classes = 3, 400, 5
    labels = rng.integers(0, classes, n)
    # exit e is right with probability 0.5, 0.7, 0.9 and more confident when right
    logits = rng.normal(size=(exits, n, classes))
    for e, rate in enumerate((0.5, 0.7, 0.9)):
        right = rng.random(n) < rate
        logits[e, np.arange(n), labels] += np.where(right, 4.0, -4.0)
    layers = np.array([1, 2, 4])
    threshold, curve = calibrate_threshold(logits, labels, layers, max_accuracy_drop=0.02)
    full = (logits[-1].argmax(-1) == labels).mean()
    # the numpy reference: every candidate threshold, accuracy and mean cost
    p = np.exp(logits - logits.max(-1, keepdims=True))
    conf = (p / p.sum(-1, keepdims=True)).max(-1)
    best = None
    for t in np.unique(np.concatenate([conf[:-1].ravel(), [1 + 1e-6]])):
        confident = conf >= t
        confident[-1] = True
        taken = confident.argmax(0)
        acc = (logits[taken, np.arange(n)].argmax(-1) == labels).mean()
        cost = layers[taken].mean()
        if acc >= full - 0.02 - 1e-12 and (best is None or (cost, -acc) < (best[1], -best[2])):
            best = (t, cost, acc)
    assert threshold == pytest.approx(best[0])
    assert best[1] < 4.0  # it does exit early for some examples
    assert len(curve) == len(np.unique(np.concatenate([conf[:-1].ravel(), [1 + 1e-6]])))
    _, no_loss = calibrate_threshold(logits, labels, layers, max_accuracy_drop=0.0)
    assert max(row[1] for row in no_loss) >= full


CLASSIFIER = ModelConfig(kind="classifier", num_layers=4, d_model=16, num_heads=2, mlp_dim=32, exit_layers=(1, 2))


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.4, 1.0])
def test_classifier_exits_equal_the_full_forwards_exit_outputs(threshold):
    model = Transformer(CLASSIFIER, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    full = model(images)
    all_logits = jnp.stack([*full.exits, full.logits])
    want_taken = exit_index(confidence(all_logits), threshold)
    want = all_logits[want_taken, jnp.arange(6)]
    for batch in (slice(0, 6), slice(0, 1), slice(3, 4)):  # the whole batch, and one example at a time
        logits, taken = classify_with_exits(model, images[batch], threshold=threshold)
        np.testing.assert_array_equal(taken, want_taken[batch])
        np.testing.assert_allclose(logits, want[batch], atol=1e-5)


LM = ModelConfig(
    kind="lm", num_layers=4, d_model=16, num_heads=2, mlp_dim=32, vocab_size=11, max_seq_len=32, exit_layers=(1, 2)
)


def _reference(model, prompt, new_tokens, threshold, exit_layers=None):
    """Greedy decoding by full forwards in which a generated token that exited at block e passes every later
    block's input through (its keys and values there computed from the exit's hidden state). The forward runs at
    the final length every step (one compiled function; causal attention: later slots do not change earlier ones)."""
    width, layers = prompt.shape[1], model.config.num_layers
    length = width + new_tokens
    exit_layers = tuple(model.config.exit_layers if exit_layers is None else exit_layers)
    graphdef, params = nnx.split(model)

    @jax.jit
    def exits_at(params, tokens, keep, index):
        m = nnx.merge(graphdef, params)
        out = m(tokens, layer_keep=keep, return_hidden_states=True)
        heads = {layer: m.exits.exit_logits for layer in m.config.exit_layers}
        shared = lambda h, layer: m._logits(m.final_norm(h))  # LayerSkip's shared head
        logits = [heads.get(layer, shared)(out.hidden_states[layer][0, index], layer) for layer in exit_layers]
        return jnp.stack([*logits, out.logits[0, index]])

    tokens = np.zeros((1, length), np.int32)
    tokens[0, :width] = np.asarray(prompt[0])
    keep = np.ones((1, length, layers), bool)
    exit_blocks = [*exit_layers, layers]
    taken, chosen = [], []
    for step in range(new_tokens):
        index = width + step - 1  # the position whose prediction is the next token
        logits = exits_at(params, jnp.asarray(tokens), jnp.asarray(keep), index)
        exit_number = len(exit_blocks) - 1 if step == 0 else int(exit_index(confidence(logits[:, None]), threshold)[0])
        if step:
            taken.append(exit_number)
            chosen.append(np.asarray(logits[exit_number]))
            keep[0, index, exit_blocks[exit_number] :] = False
        tokens[0, index + 1] = int(jnp.argmax(logits[exit_number]))
    return tokens[0, width:], taken, np.stack(chosen)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0])  # 0.3 mixes exits
def test_lm_token_exits_fill_the_skipped_caches_like_the_reference(threshold):
    model = Transformer(LM, rngs=nnx.Rngs(2))
    prompt = jax.random.randint(jax.random.key(3), (1, 5), 0, 11)
    tokens, taken, logits = generate_with_exits(model, prompt, max_new_tokens=8, threshold=threshold)
    want_tokens, want_taken, want_logits = _reference(model, prompt, 8, threshold)
    np.testing.assert_array_equal(np.asarray(tokens)[0], want_tokens)
    np.testing.assert_array_equal(taken, want_taken)
    np.testing.assert_allclose(np.asarray(logits)[0], want_logits, atol=2e-5)
    if threshold == 1.0:
        np.testing.assert_array_equal(tokens, generate(model, prompt, max_new_tokens=8))
    if threshold == 0.0:  # every token from the first exit
        assert set(want_taken) == {0}
    if threshold == 0.3:  # early tokens exit early, later ones go deeper and read the filled caches
        assert want_taken[0] < max(want_taken[1:]) and len(set(want_taken)) == 3, want_taken


def test_lm_token_exits_through_the_shared_head_of_a_model_without_exit_heads():
    # A LayerSkip-trained model has no exit heads: its blocks' outputs go through the final norm and head.
    model = Transformer(dataclasses.replace(LM, exit_layers=()), rngs=nnx.Rngs(2))
    prompt = jax.random.randint(jax.random.key(3), (1, 5), 0, 11)
    tokens, taken, logits = generate_with_exits(model, prompt, max_new_tokens=8, threshold=0.2, exit_layers=(1, 3))
    want_tokens, want_taken, want_logits = _reference(model, prompt, 8, 0.2, exit_layers=(1, 3))
    np.testing.assert_array_equal(np.asarray(tokens)[0], want_tokens)
    np.testing.assert_array_equal(taken, want_taken)
    np.testing.assert_allclose(np.asarray(logits)[0], want_logits, atol=2e-5)
    assert len(set(want_taken)) >= 2, want_taken  # exits and full-depth tokens mix
    for bad, message in [((2, 2), "strictly increasing"), ((0, 2), "leaves \\[1, 3\\]"), ((4,), "leaves")]:
        with pytest.raises(UserError, match=message):
            generate_with_exits(model, prompt, max_new_tokens=4, threshold=0.5, exit_layers=bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=1.5), "threshold: expected a number in [0, 1]"),
        (dict(threshold=0.5, measure="margin"), "measure: expected one of"),
    ],
)
def test_bad_options(kwargs, message):
    model = Transformer(CLASSIFIER, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        classify_with_exits(model, jnp.zeros((1, 8, 8, 1)), **kwargs)
    plain = Transformer(dataclasses.replace(CLASSIFIER, exit_layers=()), rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="need a model with exits"):
        classify_with_exits(plain, jnp.zeros((1, 8, 8, 1)), threshold=0.5)

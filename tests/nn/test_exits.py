"""Multi-exit heads: a shared head, the layer-index embedding, and each exit reading only its own layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.nn.exits import ExitHeads

D_MODEL, OUTPUTS, LAYERS = 12, 5, 6
EXITS = (2, 4, 6)


HEADS = ExitHeads(D_MODEL, OUTPUTS, EXITS, LAYERS, embed_dim=3, rngs=nnx.Rngs(0))
_all_exits = jax.jit(lambda hidden_states: HEADS.from_all_layers(hidden_states))


def _hidden_states(seed=0, shape=(2, 7)):
    keys = jax.random.split(jax.random.key(seed), LAYERS + 1)
    return [jax.random.normal(key, shape + (D_MODEL,)) for key in keys]


def test_exit_logits_match_a_numpy_reference():
    heads = HEADS
    hidden = np.random.default_rng(0).normal(size=(3, D_MODEL)).astype(np.float32)
    embedding = np.asarray(heads.layer_embedding.embedding[...])[4]
    normed = hidden / np.sqrt(np.mean(hidden**2, axis=-1, keepdims=True) + 1e-6)
    features = np.concatenate([normed, np.broadcast_to(embedding, (3, 3))], axis=-1)
    expected = features @ np.asarray(heads.head.kernel[...]) + np.asarray(heads.head.bias[...])
    np.testing.assert_allclose(heads.exit_logits(jnp.asarray(hidden), 4), expected, rtol=1e-5, atol=1e-5)


def test_one_logit_tensor_per_exit():
    heads = HEADS
    all_states = _hidden_states()
    exits = _all_exits(all_states)
    assert len(exits) == len(EXITS)
    assert all(out.shape == (2, 7, OUTPUTS) and out.dtype == jnp.float32 for out in exits)
    for out, layer in zip(exits, EXITS, strict=True):
        np.testing.assert_allclose(out, heads.exit_logits(all_states[layer], layer), rtol=1e-6, atol=1e-6)


def test_each_exit_depends_only_on_its_own_hidden_state():
    states = _hidden_states(1)
    changed = list(states)
    changed[4] = changed[4] * 3.0 + 1.0  # exit 2 of 3 reads layer 4
    before = _all_exits(states)
    after = _all_exits(changed)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[2], after[2])
    assert not np.allclose(before[1], after[1])


def test_the_layer_embedding_tells_exits_apart():
    heads = HEADS
    hidden = _hidden_states(2)[0]
    assert not np.allclose(heads.exit_logits(hidden, 2), heads.exit_logits(hidden, 4))


def test_gradient_reaches_only_the_exits_hidden_state():
    states = _hidden_states(3)
    grads = jax.jit(jax.grad(lambda hs: jnp.sum(HEADS.from_all_layers(hs)[0])))(states)
    for layer, grad in enumerate(grads):
        assert (np.abs(np.asarray(grad)).sum() > 0) == (layer == EXITS[0])


@pytest.mark.parametrize("bad", [(), (0, 2), (3, 2), (2, 2), (7,)])
def test_invalid_exit_layers_are_rejected(bad):
    with pytest.raises(ValueError, match="exit_layers"):
        ExitHeads(D_MODEL, OUTPUTS, bad, LAYERS, rngs=nnx.Rngs(0))


def test_wrong_number_of_hidden_states_is_rejected():
    heads = HEADS
    with pytest.raises(ValueError, match="one per exit"):
        heads(_hidden_states()[:2])
    with pytest.raises(ValueError, match="embeddings"):
        heads.from_all_layers(_hidden_states()[:3])

"""The KV cache: per-row writes land at each row's slots, and the compiled decode loop never copies the cache."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import sample_completions
from jdistill.nn.kv_cache import KVCache
from tests.hlo_copies import cache_sized, loop_copy_shapes

LM = ModelConfig(kind="lm", num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, vocab_size=50)


def test_write_stores_each_rows_tokens_at_its_own_slots():
    cache = KVCache.zeros(2, 6, 2, 3).replace(offset=jnp.array([1, 0], jnp.int32))
    keys = jnp.arange(2 * 2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 2, 3) + 1  # [batch, seq, kv_heads, head_dim]
    positions = jnp.array([[0, 1], [3, 4]])  # row 0 -> slots 1, 2 (offset 1); row 1 -> slots 3, 4
    written = cache.write(keys, -keys, positions)
    expected = np.zeros((2, 2, 6, 3), np.float32)  # [batch, kv_heads, slot, head_dim]
    expected[0, :, 1:3] = np.swapaxes(keys[0], 0, 1)
    expected[1, :, 3:5] = np.swapaxes(keys[1], 0, 1)
    transposed = np.swapaxes(expected, 2, 3)  # values: [batch, kv_heads, head_dim, slot]
    np.testing.assert_array_equal(written.keys, expected.reshape(written.keys.shape))
    np.testing.assert_array_equal(written.values, -transposed.reshape(written.values.shape))
    one_row = (
        KVCache.zeros(1, 6, 2, 3).replace(offset=jnp.array([1], jnp.int32)).write(keys[:1], -keys[:1], positions[:1])
    )
    np.testing.assert_array_equal(one_row.keys, expected[:1].reshape(one_row.keys.shape))  # the one-row path
    np.testing.assert_array_equal(one_row.values, -transposed[:1].reshape(one_row.values.shape))


def test_the_compiled_decode_loop_does_not_copy_the_cache():
    """One prompt row (the benchmark's case): XLA turns the cache write into an in-place dynamic-update-slice; with
    the cache laid out `[batch, kv_heads, ...]` it duplicated that write for the attention's (batch-squeezed)
    operand and the loop carry, copying every layer's key cache 4 times per step."""
    model = Transformer(LM, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def decode(params, prompt):
        return sample_completions(nnx.merge(graphdef, params), prompt, max_new_tokens=4, rng=jax.random.key(0))

    hlo = jax.jit(decode).lower(params, np.zeros((1, 5), np.int32)).compile().as_text()
    assert cache_sized(loop_copy_shapes(hlo), model.init_cache(1, 8)[0].keys.shape) == []

"""The CPU grouped matmul (`blocked_grouped_matmul`) equals `jax.lax.ragged_dot` in value and gradient, for any
group sizes (empty groups, one group holding every row, rows past the groups' total) and block size; and
`grouped_matmul` lowers to the blocked form on CPU and to the ragged-dot instruction for a TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.kernels.grouped_matmul import blocked_grouped_matmul, default_block, grouped_matmul

SIZES = [[10, 0, 30, 4], [0, 0, 0, 50], [13, 13, 12, 12], [0, 0, 0, 0], [1, 0, 0, 0]]


@pytest.fixture(scope="module")
def operands():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(50, 6)), jnp.float32), jnp.asarray(rng.normal(size=(4, 6, 5)), jnp.float32)


@pytest.mark.parametrize("block", [None, 1, 8])
def test_blocked_equals_ragged_dot_in_value_and_gradient(operands, block):
    x, w = operands
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(50, 5)), jnp.float32)

    def value_and_grads(matmul):
        return jax.jit(jax.value_and_grad(lambda x, w, sizes: jnp.sum(matmul(x, w, sizes) * cotangent), (0, 1)))

    def blocked_matmul(x, w, sizes):
        return blocked_grouped_matmul(x, w, sizes, block=block)

    forward = jax.jit(blocked_matmul)
    reference, blocked = value_and_grads(jax.lax.ragged_dot), value_and_grads(blocked_matmul)
    for sizes in SIZES:
        group_sizes = jnp.asarray(sizes, jnp.int32)
        np.testing.assert_allclose(forward(x, w, group_sizes), jax.lax.ragged_dot(x, w, group_sizes), atol=1e-5)
        expected_leaves = jax.tree.leaves(reference(x, w, group_sizes))
        for expected, got in zip(expected_leaves, jax.tree.leaves(blocked(x, w, group_sizes)), strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(sizes))


def test_default_block_is_a_power_of_two_in_range():
    assert default_block(16384, 8) == 256 and default_block(64, 8) == 8 and default_block(1024, 8) == 32


def test_grouped_matmul_lowers_per_platform():
    rows, groups, d, f = 512, 8, 32, 32
    x, w = jnp.ones((rows, d)), jnp.ones((groups, d, f))
    sizes = jnp.asarray([100, 0, 60, 60, 60, 60, 60, 112], jnp.int32)
    fn = jax.jit(lambda x, w: grouped_matmul(x, w, sizes))
    np.testing.assert_allclose(fn(x, w), jax.lax.ragged_dot(x, w, sizes))
    # CPU: the blocked form, (M + E * (block - 1)) * d * f multiply-adds, not JAX's masked E * M * d * f
    cost = fn.lower(x, w).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    block = default_block(rows, groups)
    assert flops <= 1.5 * 2 * (rows + groups * (block - 1)) * d * f < 2 * groups * rows * d * f / 4
    tpu = fn.trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
    assert "ragged_dot" in tpu  # TPU: one grouped-matmul instruction

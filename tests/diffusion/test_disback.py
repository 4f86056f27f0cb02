"""DisBack's pure parts (jdistill.diffusion.methods.disback): the backtracking schedule and the recorded path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdistill.diffusion.methods import disback


def test_the_path_is_walked_back_to_the_teacher():
    # N = 4 checkpoints over the first half of 80 steps: 10 steps each on s_3, s_2, s_1, s_0, then s_0
    got = disback.backtrack_index(jnp.arange(0, 80, 5), 80, 4, 0.5)
    np.testing.assert_array_equal(got, [3, 3, 2, 2, 1, 1, 0, 0] + [0] * 8)
    np.testing.assert_array_equal(disback.backtrack_index(jnp.asarray([0, 99]), 100, 1, 1.0), [0, 0])


def test_the_degradation_path_records_equal_segments_from_the_start():
    """A quadratic pulled toward a target by SGD: the path holds the start, then the parameters after every
    segment, and they approach the target monotonically."""
    start = {"w": jnp.zeros(3)}
    target = jnp.asarray([1.0, -2.0, 0.5])
    loss = lambda params, key: 0.5 * jnp.sum((params["w"] - target) ** 2)
    path = disback.record_degradation(loss, start, optax.sgd(0.1), 12, 4, jax.random.key(0))
    assert path["w"].shape == (5, 3)
    np.testing.assert_array_equal(path["w"][0], start["w"])
    # SGD on the quadratic: w_k = target (1 - 0.9^k), saved at k = 3, 6, 9, 12
    for i, k in enumerate((3, 6, 9, 12), start=1):
        np.testing.assert_allclose(path["w"][i], target * (1 - 0.9**k), rtol=1e-5)
    frozen = disback.record_degradation(loss, start, optax.sgd(0.0), 12, 4, jax.random.key(0))
    np.testing.assert_array_equal(frozen["w"], np.zeros((5, 3)))

"""Denoisers with random weights for the diffusion tests, made without running (or compiling) any initialiser."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_weights(build, scale=0.3):
    """The module `build()` makes, with every parameter drawn from N(0, scale^2) in numpy (no initialiser runs, so
    nothing compiles; and every path, the zero-initialised ones included, carries signal)."""
    graphdef, params = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(7)
    values = jax.tree.map(lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype), params)
    return nnx.merge(graphdef, values)

"""Data for diffusion models: the embedded digits scaled to [-1, 1], and 2-D toy distributions drawn from a key.

Digits (`digits(split)`): the embedded `digits` dataset's split (`jdistill.data.load_source`; 1437 train / 360
test), pixels `p in {0..16}` mapped to `x = 2 p / 16 - 1`, images `float32 [n, 8, 8, 1]` (NHWC, as the library's
classifiers read them) with their labels `int32 [n]`, in source order. `to_unit(x) = clip((x + 1) / 2, 0, 1)` maps
a generated image back to the [0, 1] inputs of the digits classifiers.

2-D toys (`toy2d(name, key, n) -> float32 [n, 2]`, pure and jit-compatible; `n` static), each a common benchmark of
the flow / diffusion literature (FFJORD, Grathwohl et al. 2019; rectified flow, Liu et al. 2023):
- `8gaussians`: an equal mixture of 8 isotropic Gaussians, means `2 (cos(2 pi k / 8), sin(2 pi k / 8))`, std 0.1;
- `two_moons`: scikit-learn's `make_moons` shape, centred: the upper arc `(cos u, sin u)` and the lower
  `(1 - cos u, 0.5 - sin u)` for `u ~ U[0, pi]`, minus `(0.5, 0.25)`, plus N(0, 0.05^2) noise per coordinate;
- `checkerboard`: uniform on the 8 unit squares of [-2, 2]^2 with `floor(x) + floor(y)` even.
Details and the metrics computed on them: docs/diffusion_metrics.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.errors import DataError

GAUSSIANS_RADIUS = 2.0
GAUSSIANS_STD = 0.1
MOONS_NOISE = 0.05


def digits(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images `float32 [n, 8, 8, 1]` in [-1, 1], labels `int32 [n]`) of the embedded digits' `split`."""
    from jdistill.data import classification_eval_batches, load_source

    source = load_source("digits", split, data_dir)
    (batch,) = classification_eval_batches(source, batch_size=len(source))  # inputs in [0, 1]: p / 16
    return 2.0 * batch["inputs"] - 1.0, batch["labels"].astype(np.int32)


def to_unit(images):
    """[-1, 1] -> [0, 1] (`(x + 1) / 2`, clipped): generated images as the digits classifiers' inputs."""
    return jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def eight_gaussians(key, n: int) -> jax.Array:
    """`n` points of the 8-Gaussian mixture (means on a circle of radius 2, std 0.1), `float32 [n, 2]`."""
    component_key, noise_key = jax.random.split(key)
    angle = 2 * math.pi * jax.random.randint(component_key, (n,), 0, 8) / 8
    means = GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return means + GAUSSIANS_STD * jax.random.normal(noise_key, (n, 2))


def two_moons(key, n: int) -> jax.Array:
    """`n` points of two interleaved half circles (`make_moons`, centred, noise std 0.05), `float32 [n, 2]`."""
    moon_key, angle_key, noise_key = jax.random.split(key, 3)
    lower = jax.random.bernoulli(moon_key, 0.5, (n,))
    u = jax.random.uniform(angle_key, (n,), maxval=math.pi)
    upper_arc = jnp.stack([jnp.cos(u), jnp.sin(u)], axis=-1)
    lower_arc = jnp.stack([1.0 - jnp.cos(u), 0.5 - jnp.sin(u)], axis=-1)
    points = jnp.where(lower[:, None], lower_arc, upper_arc) - jnp.array([0.5, 0.25])
    return points + MOONS_NOISE * jax.random.normal(noise_key, (n, 2))


def checkerboard(key, n: int) -> jax.Array:
    """`n` points uniform on the squares of [-2, 2]^2 where `floor(x) + floor(y)` is even, `float32 [n, 2]`."""
    x_key, y_key, row_key = jax.random.split(key, 3)
    x = jax.random.uniform(x_key, (n,), minval=-2.0, maxval=2.0)
    # y in [0, 1) or [-2, -1) (a square of even floor), shifted up by one where floor(x) is odd: floor(x) + floor(y)
    # is then even, and each of the 8 squares is equally likely.
    y = jax.random.uniform(y_key, (n,)) - 2.0 * jax.random.bernoulli(row_key, 0.5, (n,)) + jnp.mod(jnp.floor(x), 2)
    return jnp.stack([x, y], axis=-1)


TOY_2D: dict[str, Callable[..., jax.Array]] = {
    "8gaussians": eight_gaussians,
    "two_moons": two_moons,
    "checkerboard": checkerboard,
}


def toy2d(name: str, key, n: int) -> jax.Array:
    """`n` points of the 2-D toy distribution `name` (see the module docstring) from `key`, `float32 [n, 2]`."""
    return toy2d_sampler(name)(key, n)


def toy2d_sampler(name: str) -> Callable[..., jax.Array]:
    """The sampler `(key, n) -> [n, 2]` of toy distribution `name`; an unknown name is a one-line `DataError`."""
    if name not in TOY_2D:
        raise DataError(f"unknown 2-D distribution {name!r}: expected one of {', '.join(TOY_2D)}")
    return TOY_2D[name]

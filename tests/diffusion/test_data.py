"""jdistill.diffusion.data: digits in [-1, 1] with labels, and the 2-D toy distributions' defining properties."""

import jax
import numpy as np
import pytest

from jdistill.data import load_source
from jdistill.data.builders.digits import NUM_EXAMPLES, NUM_TRAIN
from jdistill.diffusion import data
from jdistill.errors import DataError


def test_digits_scaled_to_minus_one_one_with_labels(data_dir):
    images, labels = data.digits("train", data_dir)
    test_images, _ = data.digits("test", data_dir)
    assert images.shape == (NUM_TRAIN, 8, 8, 1) and images.dtype == np.float32
    assert test_images.shape == (NUM_EXAMPLES - NUM_TRAIN, 8, 8, 1)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == set(range(10))
    source = load_source("digits", "train", data_dir)
    for index in (0, 7, NUM_TRAIN - 1):  # pixel p in 0..16 -> 2 p / 16 - 1, label kept, source order
        np.testing.assert_allclose(images[index], source[index]["image"] / 8.0 - 1.0, atol=1e-6)
        assert labels[index] == source[index]["label"]
    assert images.min() == -1.0 and images.max() == 1.0
    np.testing.assert_allclose(data.to_unit(images), source_unit := (images + 1) / 2, atol=1e-6)
    assert float(data.to_unit(np.float32([3.0, -3.0]))[0]) == 1.0 and source_unit.min() == 0.0


def _draw(name, n=20000, seed=0):
    return np.asarray(data.toy2d(name, jax.random.key(seed), n), np.float64)


def test_eight_gaussians_modes_and_spread():
    points = _draw("8gaussians")
    angles = np.arange(8) * 2 * np.pi / 8
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    nearest = np.argmin(((points[:, None] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=8) / len(points)
    np.testing.assert_allclose(counts, 1 / 8, atol=0.015)
    residual = points - means[nearest]
    np.testing.assert_allclose(residual.std(axis=0), 0.1, rtol=0.05)
    np.testing.assert_allclose(residual.mean(axis=0), 0.0, atol=0.005)


def test_two_moons_lies_on_the_arcs():
    points = _draw("two_moons", 5000) + np.array([0.5, 0.25])
    u = np.linspace(0, np.pi, 2001)
    arcs = {"upper": np.stack([np.cos(u), np.sin(u)], -1), "lower": np.stack([1 - np.cos(u), 0.5 - np.sin(u)], -1)}
    distance = {name: np.sqrt(((points[:, None] - arc[None]) ** 2).sum(-1)).min(1) for name, arc in arcs.items()}
    nearest = np.minimum(distance["upper"], distance["lower"])
    assert np.quantile(nearest, 0.99) < 3.5 * 0.05 and np.quantile(nearest, 0.5) > 0.5 * 0.05  # noise std 0.05
    assert abs((distance["upper"] < distance["lower"]).mean() - 0.5) < 0.03


def test_checkerboard_fills_the_even_squares_uniformly():
    points = _draw("checkerboard")
    assert points.min() >= -2.0 and points.max() < 2.0
    cells = np.floor(points).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    counts = np.unique(cells, axis=0, return_counts=True)[1] / len(points)
    assert len(counts) == 8
    np.testing.assert_allclose(counts, 1 / 8, atol=0.015)


def test_toy_samples_are_a_pure_function_of_the_key():
    for name in data.TOY_2D:
        a, b, c = _draw(name, 64, 1), _draw(name, 64, 1), _draw(name, 64, 2)
        assert a.shape == (64, 2)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
    jitted = jax.jit(data.toy2d, static_argnums=(0, 2))
    np.testing.assert_allclose(jitted("two_moons", jax.random.key(1), 64), _draw("two_moons", 64, 1), atol=1e-6)


def test_unknown_distribution_is_one_line():
    with pytest.raises(DataError, match="unknown 2-D distribution 'spiral': expected one of 8gaussians"):
        data.toy2d("spiral", jax.random.key(0), 4)

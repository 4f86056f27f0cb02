"""jdistill.diffusion.grids: tiling, rows by class, PNGs that read back as written."""

import matplotlib.image
import numpy as np

from jdistill.diffusion import grids


def test_tile_places_magnified_images_between_white_gaps():
    images = np.full((2, 3, 8, 8, 1), -1.0, np.float32)  # black
    images[1, 2] = 1.0  # white
    images[0, 1, 0, 0] = 0.0  # one mid-grey pixel
    picture = grids.tile(images, scale=2, gap=1)
    assert picture.shape == (2 * 17 + 1, 3 * 17 + 1) and picture.dtype == np.uint8
    assert np.all(picture[0] == 255) and np.all(picture[:, 17] == 255)  # gaps
    assert np.all(picture[1:17, 1:17] == 0)
    assert np.all(picture[1:3, 18:20] == 128) and picture[3, 18] == 0  # the grey pixel, magnified 2x
    assert np.all(picture[18:34, 35:51] == 255)


def test_by_class_puts_class_c_in_row_c():
    labels = np.array([3, 1, 3, 0, 3, 3])
    images = np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((6, 2, 2, 1), np.float32) / 10
    grid = grids.by_class(images, labels, per_class=3, num_classes=4)
    assert grid.shape == (4, 3, 2, 2, 1)
    np.testing.assert_allclose(grid[3, :, 0, 0, 0], [0.0, 0.2, 0.4])  # the first three of class 3, in order
    np.testing.assert_allclose(grid[1, :, 0, 0, 0], [0.1, -1.0, -1.0])  # blank where a class has fewer
    assert np.all(grid[2] == -1.0)


def test_pngs_read_back(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(-1, 1, (40, 8, 8, 1)), rng.integers(0, 10, 40)
    grids.save_class_grid(tmp_path / "grid.png", images, labels, per_class=4, scale=3)
    stored = matplotlib.image.imread(tmp_path / "grid.png")
    expected = grids.tile(grids.by_class(images, labels, 4), scale=3)
    np.testing.assert_array_equal(np.round(stored * 255), expected)  # 8-bit greyscale, exact
    grids.save_image_grid(tmp_path / "flat.png", images[:13], cols=5)
    assert matplotlib.image.imread(tmp_path / "flat.png").shape[:2] == (3 * 33 + 1, 5 * 33 + 1)
    grids.save_scatter(tmp_path / "toy.png", {"a": rng.normal(size=(50, 2)), "b": rng.normal(size=(50, 2))})
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))

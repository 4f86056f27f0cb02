"""PNG sample grids: digits in rows by class, and scatter panels of 2-D samples (docs/diffusion_metrics.md).

    save_class_grid("teacher_nfe35.png", images, labels, per_class=10)   # row c: ten samples of class c
    save_scatter("toy2d_teacher.png", {"NFE 1": x1, "NFE 35": x35}, reference=real_points)

Files are written to a temporary name and renamed (`jdistill.io.fs.write_bytes_atomic`; local or gs://).
"""

from __future__ import annotations

import io

import numpy as np

from jdistill.io import fs


def tile(images, *, scale: int = 4, gap: int = 1) -> np.ndarray:
    """`[rows, cols, h, w(, 1)]` images in [-1, 1] -> one uint8 grey picture `[rows (h s + g) + g, ...]`: each image
    magnified `scale` times (nearest neighbour), `gap` white pixels between and around them; values clipped."""
    images = np.asarray(images, np.float32)
    if images.ndim == 5:
        images = images[..., 0]
    if images.ndim != 4:
        raise ValueError(f"tile: expected [rows, cols, height, width(, 1)] images, got shape {images.shape}")
    rows, cols, height, width = images.shape
    pixels = np.clip((images + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    cell_h, cell_w = height * scale + gap, width * scale + gap
    picture = np.full((rows * cell_h + gap, cols * cell_w + gap), 255, np.uint8)
    for row in range(rows):
        for col in range(cols):
            top, left = gap + row * cell_h, gap + col * cell_w
            picture[top : top + height * scale, left : left + width * scale] = pixels[row, col]
    return picture


def by_class(images, labels, per_class: int, num_classes: int = 10) -> np.ndarray:
    """`[num_classes, per_class, ...]`: row c holds the first `per_class` images with label c (blank, i.e. -1,
    where a class has fewer)."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    grid = np.full((num_classes, per_class, *images.shape[1:]), -1.0, np.float32)
    for label in range(num_classes):
        chosen = images[labels == label][:per_class]
        grid[label, : len(chosen)] = chosen
    return grid


def png_bytes(picture: np.ndarray) -> bytes:
    """A grey uint8 `[h, w]` array as 8-bit greyscale PNG bytes (Pillow, which matplotlib depends on)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(picture, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_class_grid(path, images, labels, *, per_class: int = 10, num_classes: int = 10, scale: int = 4) -> None:
    """A PNG of conditional samples `[n, 8, 8(, 1)]` in [-1, 1]: one row per class (0 at the top)."""
    fs.write_bytes_atomic(path, png_bytes(tile(by_class(images, labels, per_class, num_classes), scale=scale)))


def save_image_grid(path, images, *, cols: int = 10, scale: int = 4) -> None:
    """A PNG of unconditional samples `[n, h, w(, 1)]` in [-1, 1], `cols` per row (the last row padded blank)."""
    images = np.asarray(images, np.float32)
    rows = -(-len(images) // cols)
    padded = np.full((rows * cols, *images.shape[1:]), -1.0, np.float32)
    padded[: len(images)] = images
    fs.write_bytes_atomic(path, png_bytes(tile(padded.reshape(rows, cols, *images.shape[1:]), scale=scale)))


def save_scatter(path, panels: dict, *, reference=None, limit: float = 3.0) -> None:
    """A PNG with one scatter panel per entry of `panels` ({title: points `[n, 2]`}), each over the `reference`
    points in grey when given, on the square [-limit, limit]^2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels.items(), strict=True):
        if reference is not None:
            ax.scatter(*np.asarray(reference).T, s=1, c="0.75", linewidths=0)
        ax.scatter(*np.asarray(points).T, s=1, c="C0", linewidths=0)
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", title=title, xticks=[], yticks=[])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fs.write_bytes_atomic(path, buffer.getvalue())

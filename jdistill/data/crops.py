"""Image augmentations in JAX, pure functions of a key: random resized crops, flips, jitter, DINO multi-crop.

They run inside the jitted train step (a recipe draws the views from the step key), so every view is a
deterministic function of `(seed, step)` and a resumed run sees the same crops. Images are float
`[batch, height, width, channels]` in [0, 1]; every op is applied independently per example.

Every crop, global or local, is resampled (bilinear) to the same output size, by default the input size.
The patch transformers of jdistill have fixed, learned position embeddings for one input size (digits:
8x8), so DINO's smaller local crops (96 px next to 224 px global ones in the paper) cannot be fed at a
smaller resolution: here a local crop is a *small random region* (area fraction `local_scale`) upsampled to
the model's input size, and it differs from a global crop only in how much of the image it covers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# DINO's defaults (Caron et al. 2021): global crops cover 40-100% of the image, local ones 5-40%.
GLOBAL_SCALE = (0.4, 1.0)
LOCAL_SCALE = (0.05, 0.4)
ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def crop_boxes(rng, batch: int, height: int, width: int, *, scale=GLOBAL_SCALE, ratio=ASPECT_RATIO):
    """Random crop boxes `[batch, 4]` as (top, left, box height, box width) in pixels (floats).

    The area fraction is uniform in `scale`, the log aspect ratio (width / height) uniform in log `ratio`
    (as torchvision's RandomResizedCrop); sides are clipped to the image and the box placed uniformly in it.
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
    area = jax.random.uniform(k_area, (batch,), minval=scale[0], maxval=scale[1]) * height * width
    log_ratio = jax.random.uniform(k_ratio, (batch,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    aspect = jnp.exp(log_ratio)
    box_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
    box_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
    top = jax.random.uniform(k_top, (batch,)) * (height - box_h)
    left = jax.random.uniform(k_left, (batch,)) * (width - box_w)
    return jnp.stack([top, left, box_h, box_w], axis=-1)


def _interpolation_matrix(start, size, out: int, length: int):
    """Bilinear weights `[batch, out, length]`: output pixel o samples start + (o + 0.5) * size / out - 0.5,
    clamped to the image (the border value extends outwards)."""
    coords = start[:, None] + (jnp.arange(out) + 0.5) * size[:, None] / out - 0.5
    coords = jnp.clip(coords, 0.0, length - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(coords[:, :, None] - jnp.arange(length)))


def resize_crops(images, boxes, out_size: tuple[int, int] | None = None):
    """Bilinear resampling of each image's box (`crop_boxes` layout) to `out_size` (default: input size).

    Output pixel (i, j) samples the input at (top + (i + 0.5) * box_h / out_h - 0.5, ...), the pixel centres of
    the box; coordinates outside the image take the nearest border value. Separable: rows @ image @ cols^T.
    """
    _, height, width, _ = images.shape
    out_h, out_w = out_size or (height, width)
    boxes = boxes.astype(images.dtype)
    rows = _interpolation_matrix(boxes[:, 0], boxes[:, 2], out_h, height).astype(images.dtype)
    cols = _interpolation_matrix(boxes[:, 1], boxes[:, 3], out_w, width).astype(images.dtype)
    return jnp.einsum("boh,bhwc,bpw->bopc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


def random_flip(rng, images, prob: float = 0.5):
    """Mirror each image left-right with probability `prob`."""
    flip = jax.random.bernoulli(rng, prob, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def color_jitter(rng, images, *, brightness: float = 0.4, contrast: float = 0.4):
    """Per-image brightness and contrast jitter (the grey-level part of DINO's ColorJitter), clipped to [0, 1].

    x <- x * b with b ~ U(1 - brightness, 1 + brightness); then x <- mean + c * (x - mean) with
    c ~ U(1 - contrast, 1 + contrast) and mean the image's mean. 0 disables either.
    """
    k_b, k_c = jax.random.split(rng)
    shape = (images.shape[0], 1, 1, 1)
    b = jax.random.uniform(k_b, shape, images.dtype, 1.0 - brightness, 1.0 + brightness)
    c = jax.random.uniform(k_c, shape, images.dtype, 1.0 - contrast, 1.0 + contrast)
    images = images * b
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return jnp.clip(mean + c * (images - mean), 0.0, 1.0)


def multi_crop(
    rng,
    images,
    *,
    n_global: int = 2,
    n_local: int = 6,
    global_scale=GLOBAL_SCALE,
    local_scale=LOCAL_SCALE,
    flip_prob: float = 0.5,
    brightness: float = 0.4,
    contrast: float = 0.4,
):
    """DINO multi-crop: `[n_global + n_local, batch, H, W, C]`, the global views first, all at the input size.

    Global views cover `global_scale` of the image, local ones `local_scale` (upsampled to the input size, see the
    module docstring); then flip and jitter. All views are drawn in one vectorised pass from `rng`.
    """
    n_views, (batch, height, width, channels) = n_global + n_local, images.shape
    k_global, k_local, k_flip, k_jitter = jax.random.split(rng, 4)
    boxes = [crop_boxes(k_global, n_global * batch, height, width, scale=global_scale)]
    if n_local:
        boxes.append(crop_boxes(k_local, n_local * batch, height, width, scale=local_scale))
    tiled = jnp.broadcast_to(images, (n_views, *images.shape)).reshape(n_views * batch, height, width, channels)
    views = resize_crops(tiled, jnp.concatenate(boxes))
    if flip_prob > 0:
        views = random_flip(k_flip, views, flip_prob)
    if brightness > 0 or contrast > 0:
        views = color_jitter(k_jitter, views, brightness=brightness, contrast=contrast)
    return views.reshape(n_views, batch, height, width, channels)

"""Sample-quality metrics of generative models: pure numpy functions of sample or feature arrays, in float64.

- `sliced_wasserstein(x, y, key)`: SWD_p = (E_theta W_p^p(theta . X, theta . Y))^(1/p) over random unit
  directions theta (Rabin et al. 2011; Bonneel et al. 2015), the 1-D W_p between equal-size sets from sorted
  projections.
- `mmd2(x, y)`: the unbiased squared maximum mean discrepancy with a sum of Gaussian RBF kernels
  (Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3).
- `frechet_distance(stats_a, stats_b)`: the Frechet (2-Wasserstein) distance between the Gaussians fitted to two
  feature sets, |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Dowson & Landau 1982; FID,
  Heusel et al. 2017), with the matrix square roots from symmetric eigendecompositions.
- `precision_recall(real, fake, k)`: improved precision and recall (Kynkaanniemi et al. 2019): the share of fake
  samples inside the real manifold (the union of balls around real samples reaching their k-th nearest real
  neighbour), and the share of real samples inside the fake manifold.
- `class_accuracy(predicted, requested)`: the share of conditional samples a classifier assigns to the requested
  class.
Definitions and how the benchmark uses them: docs/diffusion_metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_BANDWIDTHS = (0.1, 0.5, 2.0)
DEFAULT_PROJECTIONS = 512
DEFAULT_K = 3
_ROWS_PER_CHUNK = 1024


def _as_matrix(x, name: str) -> np.ndarray:
    array = np.asarray(x, np.float64)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty [n, d] array, got shape {array.shape}")
    return array


def sliced_wasserstein(x, y, seed: int = 0, *, num_projections: int = DEFAULT_PROJECTIONS, p: int = 2) -> float:
    """SWD_p between the equal-size point sets `x, y [n, d]` over `num_projections` directions drawn from `seed`.

    Each direction theta is uniform on the unit sphere; between two sets of n points on a line W_p^p is
    `(1/n) sum_i |x_(i) - y_(i)|^p` over the sorted values. SWD_p = (mean over theta of W_p^p)^(1/p); 0 for
    identical sets, and for y = x + v it tends to |v| E|theta_1|^p^(1/p) (= |v| / sqrt(d) for p = 2).
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs sets of equal shape, got {x.shape} and {y.shape}")
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    gaps = np.sort(x @ directions, axis=0) - np.sort(y @ directions, axis=0)
    return float(np.mean(np.abs(gaps) ** p) ** (1.0 / p))


def _kernel_sum(a: np.ndarray, b: np.ndarray, bandwidths: Sequence[float], *, skip_diagonal: bool) -> float:
    """sum_{i, j} sum_h exp(-|a_i - b_j|^2 / (2 h^2)), leaving out i = j when `skip_diagonal` (a is b)."""
    total = 0.0
    b_norms = (b * b).sum(1)
    for start in range(0, len(a), _ROWS_PER_CHUNK):
        rows = a[start : start + _ROWS_PER_CHUNK]
        squared = np.maximum((rows * rows).sum(1)[:, None] + b_norms[None] - 2.0 * rows @ b.T, 0.0)
        if skip_diagonal:
            squared[np.arange(len(rows)), start + np.arange(len(rows))] = np.inf
        total += sum(float(np.exp(-squared / (2.0 * h * h)).sum()) for h in bandwidths)
    return total


def mmd2(x, y, *, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> float:
    """Unbiased MMD^2 between samples `x [m, d]` and `y [n, d]` (m, n >= 2), kernel k = sum_h exp(-|a-b|^2/(2h^2)):

        MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n)

    Its expectation is the population MMD^2 (0 iff the distributions are equal, the kernel being characteristic);
    a single estimate may be slightly negative.
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    m, n = len(x), len(y)
    if min(m, n) < 2:
        raise ValueError(f"mmd2 needs at least 2 samples on each side, got {m} and {n}")
    within_x = _kernel_sum(x, x, bandwidths, skip_diagonal=True) / (m * (m - 1))
    within_y = _kernel_sum(y, y, bandwidths, skip_diagonal=True) / (n * (n - 1))
    across = _kernel_sum(x, y, bandwidths, skip_diagonal=False) / (m * n)
    return within_x + within_y - 2.0 * across


class GaussianStats(NamedTuple):
    """Mean `[d]` and covariance `[d, d]` (unbiased, ddof 1) of a feature set, float64."""

    mean: np.ndarray
    cov: np.ndarray


def gaussian_stats(features) -> GaussianStats:
    """The mean and the unbiased covariance of `features [n, d]` (n >= 2)."""
    features = _as_matrix(features, "features")
    if len(features) < 2:
        raise ValueError("gaussian_stats needs at least 2 feature vectors")
    return GaussianStats(features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], -1))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (negative rounding-noise eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), clipped at 0 (rounding).

    The cross term equals the usual tr((S_a S_b)^1/2) (S_a S_b is similar to S_a^1/2 S_b S_a^1/2), but is taken
    from the eigenvalues of a symmetric PSD matrix, so a rank-deficient covariance (fewer samples than features)
    gives no complex parts or NaN, unlike a general `sqrtm` of S_a S_b.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"frechet_distance: feature sizes differ ({a.mean.shape[0]} and {b.mean.shape[0]})")
    root_a = _psd_sqrt(a.cov)
    cross = root_a @ b.cov @ root_a
    trace_sqrt = np.sqrt(np.maximum(np.linalg.eigvalsh((cross + cross.T) / 2.0), 0.0)).sum()
    distance = float(((a.mean - b.mean) ** 2).sum() + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def feature_fd(features_a, features_b) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets `[n_a, d]`, `[n_b, d]`."""
    return frechet_distance(gaussian_stats(features_a), gaussian_stats(features_b))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0)


def knn_radii(features, k: int = DEFAULT_K) -> np.ndarray:
    """Squared distance from each of `features [n, d]` to its k-th nearest neighbour among the others `[n]`."""
    features = _as_matrix(features, "features")
    if not 1 <= k < len(features):
        raise ValueError(f"k-NN radius: k = {k} needs 1 <= k < the number of points ({len(features)})")
    squared = _squared_distances(features, features)
    np.fill_diagonal(squared, 0.0)  # the point itself is its 0-th neighbour, excluded by taking index k
    return np.partition(squared, k, axis=1)[:, k]


def coverage(queries, support, radii) -> float:
    """The share of `queries` inside some ball `|q - support_j|^2 <= radii_j` (the k-NN manifold of `support`)."""
    queries, support = _as_matrix(queries, "queries"), _as_matrix(support, "support")
    inside = [
        (_squared_distances(queries[start : start + _ROWS_PER_CHUNK], support) <= radii[None]).any(1)
        for start in range(0, len(queries), _ROWS_PER_CHUNK)
    ]
    return float(np.concatenate(inside).mean())


def precision_recall(real, fake, k: int = DEFAULT_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `fake [m, d]` against `real [n, d]`:

        precision = (1/m) sum_j [fake_j in M(real)],  recall = (1/n) sum_i [real_i in M(fake)],
        M(S) = union over s in S of the ball around s of radius |s - NN_k(s, S)|,

    NN_k the k-th nearest other point of the same set (the paper uses k = 3). Precision: how much of what is
    generated looks real; recall: how much of the real data the generator covers (a collapsed generator has
    recall near 0). Both are 1 for `fake = real`.
    """
    real, fake = _as_matrix(real, "real"), _as_matrix(fake, "fake")
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def class_accuracy(predicted, requested) -> float:
    """The share of conditional samples whose predicted class equals the requested one (`[n]` integer arrays)."""
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    if predicted.shape != requested.shape or predicted.ndim != 1 or len(predicted) == 0:
        raise ValueError(f"class_accuracy: expected two equal [n] arrays, got {predicted.shape} and {requested.shape}")
    return float((predicted == requested).mean())

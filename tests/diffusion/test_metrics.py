"""jdistill.diffusion.metrics against direct numpy / scipy implementations of the formulas and their limiting cases."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from jdistill.diffusion import metrics


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- sliced Wasserstein ----------------------------------------------------------------------------------------------


def test_swd_of_identical_sets_is_zero_and_of_a_permutation_too():
    x = _rng().normal(size=(300, 2))
    assert metrics.sliced_wasserstein(x, x) == 0.0
    assert metrics.sliced_wasserstein(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_swd_in_one_dimension_is_the_wasserstein_distance():
    x, y = _rng(1).normal(size=(500, 1)), _rng(2).exponential(size=(500, 1))
    w1 = scipy.stats.wasserstein_distance(x[:, 0], y[:, 0])
    assert metrics.sliced_wasserstein(x, y, p=1, num_projections=3) == pytest.approx(w1, rel=1e-12)


def test_swd_of_a_translation_matches_the_closed_form():
    # y = x + v: every projection is shifted by theta.v, so SWD_2^2 = E (theta.v)^2 = |v|^2 / d for uniform theta.
    x = _rng(3).normal(size=(200, 2))
    v = np.array([0.6, -0.8])
    swd = metrics.sliced_wasserstein(x, x + v, num_projections=20000)
    assert swd == pytest.approx(1.0 / np.sqrt(2), rel=0.01)


def test_swd_against_a_numpy_loop_over_the_same_directions():
    x, y = _rng(4).normal(size=(50, 3)), _rng(5).uniform(size=(50, 3))
    directions = np.random.default_rng(7).standard_normal((3, 16))
    directions /= np.linalg.norm(directions, axis=0)
    per_direction = []
    for theta in directions.T:
        a, b = sorted(x @ theta), sorted(y @ theta)
        per_direction.append(np.mean([(ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)]))
    expected = np.sqrt(np.mean(per_direction))
    assert metrics.sliced_wasserstein(x, y, seed=7, num_projections=16) == pytest.approx(expected)


# -- MMD -------------------------------------------------------------------------------------------------------------


def _mmd2_loops(x, y, bandwidths):
    k = lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in bandwidths)
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_against_the_unbiased_estimator_written_out(monkeypatch):
    monkeypatch.setattr(metrics, "_ROWS_PER_CHUNK", 7)  # several row chunks, the diagonal crossing their borders
    x, y = _rng(6).normal(size=(23, 2)), _rng(7).normal(0.3, 1.2, size=(17, 2))
    for bandwidths in ((1.0,), (0.1, 0.5, 2.0)):
        expected = _mmd2_loops(x, y, bandwidths)
        assert metrics.mmd2(x, y, bandwidths=bandwidths) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_mmd_is_unbiased_for_equal_distributions_and_positive_otherwise():
    # The biased (V-statistic) estimate, which keeps the i = j terms, averages about 2 (k(0) - E k) / m > 0 here.
    estimates = [metrics.mmd2(_rng(s).normal(size=(20, 2)), _rng(1000 + s).normal(size=(20, 2))) for s in range(300)]
    assert abs(np.mean(estimates)) < 3 * np.std(estimates) / np.sqrt(len(estimates))
    assert min(estimates) < 0  # an unbiased estimate of 0 must go negative sometimes
    shifted = metrics.mmd2(_rng(8).normal(size=(200, 2)), _rng(9).normal(size=(200, 2)) + 1.0)
    assert shifted > 0.2  # a unit shift of both coordinates


# -- Frechet distance ------------------------------------------------------------------------------------------------


def _fd_scipy(a, b):
    """The usual FID formula with scipy's general sqrtm of S_a S_b (pytorch-fid's computation)."""
    covmean = scipy.linalg.sqrtm(a.cov @ b.cov).real
    return np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov + b.cov - 2 * covmean)


def test_fd_of_a_set_with_itself_is_zero():
    features = _rng(10).normal(size=(100, 16)) @ _rng(11).normal(size=(16, 16))
    assert metrics.feature_fd(features, features) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(features.T)))
    low_rank = _rng(12).normal(size=(10, 32))  # 10 samples of 32 features: a rank-9 covariance
    assert metrics.feature_fd(low_rank, low_rank) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_two_gaussians_in_closed_form():
    # Commuting covariances: FD = |mu_a - mu_b|^2 + sum_i (sigma_a,i - sigma_b,i)^2.
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 0.5])
    a = metrics.GaussianStats(mean_a, np.diag(std_a**2))
    b = metrics.GaussianStats(mean_b, np.diag(std_b**2))
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    # Orthogonal degenerate covariances: tr S_a + tr S_b with no cross term.
    gauss = lambda *variances: metrics.GaussianStats(np.zeros(len(variances)), np.diag(variances))
    assert metrics.frechet_distance(gauss(1.0, 0.0), gauss(0.0, 4.0)) == pytest.approx(5.0)
    # A rotated copy: FD(N(0, S), N(0, R S R^T)) with S = diag(4, 1) and R a rotation by 90 degrees: 2 * (2 - 1)^2.
    assert metrics.frechet_distance(gauss(4.0, 1.0), gauss(1.0, 4.0)) == pytest.approx(2.0)


def test_fd_against_scipy_sqrtm_on_general_covariances():
    for seed in range(3):
        a = metrics.gaussian_stats(_rng(seed).normal(size=(400, 8)) @ _rng(seed + 10).normal(size=(8, 8)))
        mixing = _rng(seed + 30).normal(size=(8, 8))
        b = metrics.gaussian_stats(_rng(seed + 20).normal(1.0, 1.0, size=(400, 8)) @ mixing)
        assert metrics.frechet_distance(a, b) == pytest.approx(_fd_scipy(a, b), rel=1e-8)
        assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-9)


def test_gaussian_stats_are_the_unbiased_mean_and_covariance():
    features = _rng(13).normal(size=(30, 4))
    stats = metrics.gaussian_stats(features)
    centred = features - features.mean(0)
    np.testing.assert_allclose(stats.cov, centred.T @ centred / 29, rtol=1e-12)
    np.testing.assert_allclose(stats.mean, features.mean(0))


# -- precision / recall ----------------------------------------------------------------------------------------------


def _precision_recall_loops(real, fake, k):
    def radii(points):
        others = lambda i: [np.sum((points[i] - q) ** 2) for j, q in enumerate(points) if j != i]
        return [sorted(others(i))[k - 1] for i in range(len(points))]

    def inside(queries, support):
        r = radii(support)
        return np.mean([any(np.sum((q - s) ** 2) <= r[j] for j, s in enumerate(support)) for q in queries])

    return inside(fake, real), inside(real, fake)


def test_precision_recall_against_the_definition_written_out():
    real, fake = _rng(14).normal(size=(40, 3)), _rng(15).normal(0.7, 0.6, size=(30, 3))
    for k in (1, 3, 5):
        assert metrics.precision_recall(real, fake, k) == pytest.approx(_precision_recall_loops(real, fake, k))
    assert metrics.precision_recall(real, fake, 3) != metrics.precision_recall(real, fake, 1)


def test_knn_radius_is_the_kth_neighbour_excluding_the_point_itself():
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(metrics.knn_radii(points, 1), [1.0, 1.0, 4.0, 16.0])
    np.testing.assert_allclose(metrics.knn_radii(points, 2), [9.0, 4.0, 9.0, 36.0])
    # A ball is closed (the paper's <=): -1 lies on the boundary of the ball around 0 (radius 1) and in no other.
    assert metrics.coverage(np.array([[-1.0], [-1.01]]), points, metrics.knn_radii(points, 1)) == 0.5


def test_precision_and_recall_limits():
    real = _rng(16).normal(size=(200, 4))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    collapsed = np.repeat(real[:1] + 0.01, 200, axis=0)  # a generator that always draws the same sample
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall <= 1 / 200
    few_modes = real[:5][np.arange(200) % 5] + _rng(17).normal(scale=1e-3, size=(200, 4))
    assert metrics.precision_recall(real, few_modes)[1] < 0.1
    far = real + 100.0
    assert metrics.precision_recall(real, far) == (0.0, 0.0)


def test_class_accuracy_and_bad_shapes():
    assert metrics.class_accuracy(np.array([1, 2, 3, 3]), np.array([1, 2, 0, 3])) == 0.75
    with pytest.raises(ValueError, match="class_accuracy"):
        metrics.class_accuracy(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="equal shape"):
        metrics.sliced_wasserstein(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="k = 5"):
        metrics.knn_radii(np.zeros((5, 2)), 5)

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import consistency_trajectory as tc
from tests.diffusion.methods.paths import FAMILIES, np_alpha_sigma, np_ddim

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trajectory_consistency_function_is_the_identity_at_s_equal_t(family):
    x, x0 = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)) * 10
    t = np.array([0.9, 0.6, 0.3, 0.05])
    np.testing.assert_allclose(tc.trajectory_consistency_function(x, x0, t, t, FAMILIES[family]), x, rtol=1e-5)


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_trajectory_consistency_function_at_the_data_end_is_finite_with_finite_gradients(family):
    # VP / flow grids end at t = 0 (sigma = 0): TCD and Hyper-SD map such points to s = 0, where eps is 0 / 0.
    x, x0 = jnp.asarray(RNG.normal(size=(2, 3))), jnp.asarray(RNG.normal(size=(2, 3)))
    t = jnp.array([0.0, 0.4])
    f = tc.trajectory_consistency_function(x, x0, t, jnp.zeros(2), FAMILIES[family])
    np.testing.assert_array_equal(f[0], x[0])
    grad = jax.grad(lambda x0: jnp.sum(tc.trajectory_consistency_function(x, x0, t, jnp.zeros(2), FAMILIES[family])))
    assert bool(jnp.all(jnp.isfinite(grad(x0))))


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_trajectory_consistency_function_is_semi_linear_and_reaches_x0_at_the_clean_end(family):
    x, x0 = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    t, s = np.array([0.9, 0.6, 0.3, 0.5]), np.array([0.5, 0.2, 0.1, 0.0])
    (a_t, s_t), (a_s, s_s) = (np_alpha_sigma(family, v[:, None]) for v in (t, s))
    # exponential-integrator form: (sigma_s / sigma_t) x - alpha_s (e^{-h} - 1) x0, h = lambda_s - lambda_t
    with np.errstate(divide="ignore"):
        h = np.log(a_s / s_s) - np.log(a_t / s_t)
    expected = s_s / s_t * x - a_s * (np.exp(-h) - 1) * x0
    got = tc.trajectory_consistency_function(x, x0, t, s, FAMILIES[family])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[3], x0[3], rtol=1e-6)


def test_loss_is_zero_for_an_exact_teacher_and_targets_the_teacher_state_at_s_equal_t_n():
    point = jnp.asarray(RNG.normal(size=(1, 3)))
    oracle = lambda x, t: jnp.broadcast_to(point, x.shape)
    flow = FAMILIES["flow"]
    t_next, t_cur = jnp.array([0.9, 0.7]), jnp.array([0.8, 0.5])
    x_next = jnp.asarray(RNG.normal(size=(2, 3)))
    x_cur = tc.trajectory_consistency_function(x_next, oracle(x_next, t_next), t_next, t_cur, flow)
    for s in (jnp.zeros(2), jnp.array([0.3, 0.1]), t_cur):
        times = (t_next, t_cur, s)
        assert float(tc.trajectory_consistency_loss(x_next, oracle(x_next, 0), x_cur, point, times, flow)) < 1e-12
    student = jnp.asarray(RNG.normal(size=(2, 3)))
    online = tc.trajectory_consistency_function(x_next, student, t_next, t_cur, flow)
    got = tc.trajectory_consistency_loss(x_next, student, x_cur, jnp.zeros((2, 3)) + 5.0, (t_next, t_cur, t_cur), flow)
    np.testing.assert_allclose(got, np.mean((online - x_cur) ** 2), rtol=1e-5)


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_strategic_stochastic_step_limits(family):
    x, x0, z = (RNG.normal(size=(3, 4)) for _ in range(3))
    t, t_next = np.array([0.9, 0.7, 0.5]), np.array([0.6, 0.3, 0.2])
    alpha_sigma = FAMILIES[family]
    (a_t, s_t), (a_n, s_n) = (np_alpha_sigma(family, v[:, None]) for v in (t, t_next))
    deterministic = tc.strategic_stochastic_step(x, x0, t, t_next, z, alpha_sigma, gamma=0.0)
    np.testing.assert_allclose(deterministic, np_ddim(x, x0, a_t, s_t, a_n, s_n), rtol=1e-4, atol=1e-5)
    multistep = tc.strategic_stochastic_step(x, x0, t, t_next, z, alpha_sigma, gamma=1.0)
    np.testing.assert_allclose(multistep, a_n * x0 + s_n * z, rtol=1e-4, atol=1e-5)
    gamma = 0.4
    a_s, s_s = np_alpha_sigma(family, (1 - gamma) * t_next[:, None])
    x_s = np_ddim(x, x0, a_t, s_t, a_s, s_s)
    expected = a_n / a_s * x_s + np.sqrt(s_n**2 - (a_n / a_s * s_s) ** 2) * z
    got = tc.strategic_stochastic_step(x, x0, t, t_next, z, alpha_sigma, gamma=gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_deterministic_strategic_sampling_is_ddim():
    weight = RNG.normal(size=(3, 3)) * 0.5
    x0_fn = lambda x, t: jnp.tanh(x @ weight) * t[:, None]
    grid = np.array([1.0, 0.6, 0.3, 0.0])
    x = RNG.normal(size=(2, 3))
    got = tc.strategic_stochastic_sample(x0_fn, x, grid, jax.random.key(0), FAMILIES["flow"], gamma=0.0)
    expected = x
    for t, s in itertools.pairwise(grid):
        expected = np_ddim(expected, np.tanh(expected @ weight) * t, 1 - t, t, 1 - s, s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_tdd_targets_come_from_the_predefined_schedules():
    schedules = tc.tdd_schedules((2, 4), t_max=1.0)
    np.testing.assert_allclose(schedules, [[1, 0.5, 0, 0, 0], [1, 0.75, 0.5, 0.25, 0]], atol=1e-7)
    t_cur = jnp.asarray(RNG.uniform(0.01, 1.0, 600), jnp.float32)
    target = np.asarray(tc.tdd_target_times(jax.random.key(3), t_cur, schedules))
    t_np = np.asarray(t_cur)
    below_half = np.where(t_np > 0.5, 0.5, 0.0)
    below_quarter = np.floor(t_np * 4 - 1e-6) / 4
    assert np.all((target == below_half) | (target == below_quarter))
    assert np.all(target < t_np)
    picked_coarse = (target == below_half) & (below_half != below_quarter)
    assert 0.25 < picked_coarse.mean() / (below_half != below_quarter).mean() < 0.75
    # A time on a schedule point targets the point below it, never itself.
    on_points = np.asarray(tc.tdd_target_times(jax.random.key(4), jnp.full((64,), 0.5), schedules))
    assert set(np.round(on_points, 6)) == {0.0, 0.25}
    jittered = np.asarray(tc.tdd_target_times(jax.random.key(3), t_cur, schedules, tolerance=0.1))
    assert np.all(jittered <= target) and np.all(jittered >= np.maximum(target - 0.1, 0.0) - 1e-7)
    assert np.mean(jittered < target) > 0.5


def test_segments_and_stages():
    index = np.arange(16)
    np.testing.assert_array_equal(tc.segment_end_index(index, 16, 4), np.repeat([4, 8, 12, 16], 4))
    np.testing.assert_array_equal(tc.segment_end_index(index, 16, 1), 16)  # consistency distillation
    np.testing.assert_array_equal(tc.segment_end_index(index, 16, 16), index + 1)  # one teacher step
    np.testing.assert_array_equal(tc.segment_end_index(np.array([7, 8]), 16, jnp.asarray(2)), [8, 16])
    stages = [int(tc.hyper_sd_segments(step, 100)) for step in (0, 24, 25, 49, 50, 75, 99, 150)]
    assert stages == [8, 8, 4, 4, 2, 1, 1, 1]


def test_reward_feedback_is_the_conditions_negative_log_likelihood_without_the_null_examples():
    logits = RNG.normal(size=(5, 10)) * 2.0
    labels = np.array([3, 10, 0, 9, 10])  # 10: the null class
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([log_probs[i, labels[i]] for i in (0, 2, 3)])
    np.testing.assert_allclose(tc.reward_feedback_loss(logits, labels, 10), expected, rtol=1e-5)
    grads = jax.grad(tc.reward_feedback_loss)(jnp.asarray(logits, jnp.float32), labels, 10)
    assert float(jnp.abs(grads[np.array([1, 4])]).max()) == 0.0 and float(jnp.abs(grads[0]).max()) > 0
    assert float(tc.reward_feedback_loss(logits, np.full(5, 10), 10)) == 0.0

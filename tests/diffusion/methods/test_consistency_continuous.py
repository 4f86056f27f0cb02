import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.diffusion.methods import consistency_continuous as cc
from jdistill.diffusion.methods.common import teacher_trajectory
from tests.diffusion.methods.paths import FAMILIES, gaussian_flow_map, gaussian_x0, np_ddim

RNG = np.random.default_rng(3)
SCALE = 0.8


def test_the_exact_consistency_function_has_zero_tangent_and_zero_loss():
    # Gaussian data under a VP path: the flow map to the clean end is the exact consistency function.
    schedule = FAMILIES["vp"]
    f_star = lambda x, t: gaussian_flow_map(x, t, jnp.zeros_like(t), SCALE, "vp")
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    t = jnp.asarray([0.2, 0.4, 0.6, 0.8], jnp.float32)
    velocity = schedule.velocity_from_x0(x, t, gaussian_x0(SCALE, "vp")(x, t))
    value, tangent = cc.consistency_tangent(f_star, x, t, velocity)
    assert float(jnp.abs(tangent).max()) < 1e-5
    assert float(cc.continuous_consistency_loss(value, value, tangent)) < 1e-10
    # A function that is not constant along the ODE has a nonzero tangent equal to its finite difference.
    f_bad = lambda x, t: x * (1.0 + t[:, None])
    _, bad = cc.consistency_tangent(f_bad, x, t, velocity)
    h = 1e-3
    x_h = gaussian_flow_map(x, t, t + h, SCALE, "vp")
    finite = (f_bad(x_h, t + h) - f_bad(x, t)) / h
    np.testing.assert_allclose(bad, finite, rtol=2e-2, atol=2e-2)
    assert float(jnp.abs(bad).max()) > 0.1


def test_gradient_is_the_jacobian_times_the_normalised_tangent():
    x = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
    tangent = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
    theta = jnp.asarray(RNG.normal(size=(3, 3)), jnp.float32)
    f = lambda theta: x @ theta
    loss = lambda theta: cc.continuous_consistency_loss(f(theta), f(theta), tangent, c=0.1)
    norm = np.sqrt(np.mean(np.asarray(tangent) ** 2, axis=-1, keepdims=True))
    g = np.asarray(tangent) / (norm + 0.1)
    # d/dtheta mean_i mean_j (f - sg(f - g))^2 = 2 / (B d) x^T g
    np.testing.assert_allclose(jax.grad(loss)(theta), 2.0 / 6.0 * np.asarray(x).T @ g, rtol=1e-5, atol=1e-6)
    raw = lambda theta: cc.continuous_consistency_loss(f(theta), f(theta), tangent, normalize_tangent=False)
    np.testing.assert_allclose(raw(theta), np.mean(np.asarray(tangent) ** 2), rtol=1e-5)


def test_teacher_trajectory_and_points_are_the_teachers_own_ode():
    weight = RNG.normal(size=(3, 3)) * 0.5
    teacher = lambda x, t: jnp.tanh(x @ weight) * (1 - t[:, None])
    grid = np.array([1.0, 0.7, 0.4, 0.1, 0.0])
    x = RNG.normal(size=(5, 3))
    states = teacher_trajectory(teacher, x, grid, FAMILIES["flow"])
    assert states.shape == (5, 5, 3)
    expected = [x]
    for t, s in itertools.pairwise(grid):
        prev = expected[-1]
        expected.append(np_ddim(prev, np.tanh(prev @ weight) * (1 - t), 1 - t, t, 1 - s, s))
    np.testing.assert_allclose(states, np.stack(expected), rtol=1e-4, atol=1e-5)
    points, times = cc.trajectory_points(jax.random.key(0), states, grid)
    index = np.argmin(np.abs(grid[None] - np.asarray(times)[:, None]), axis=1)
    assert np.all(index < 4)
    np.testing.assert_allclose(points, np.asarray(states)[index, np.arange(5)])

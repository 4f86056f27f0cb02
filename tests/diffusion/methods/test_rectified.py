import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import rectified as rf
from tests.diffusion.methods.paths import FAMILIES, gaussian_x0

RNG = np.random.default_rng(4)
POINT = jnp.asarray(RNG.normal(size=(1, 3)), jnp.float32)


def straight_field(x, t):
    """The exact flow-matching velocity for point-mass data at POINT: (x - x*) / t, every path a straight line."""
    return (x - POINT) / t[:, None]


def curved_field(x, t):
    return jnp.sin(x) + t[:, None] * x


def euler_ode(v_fn, z, steps):
    x = z
    grid = np.linspace(1.0, 0.0, steps + 1)
    for t, s in itertools.pairwise(grid):
        x = rf.euler_step(v_fn, x, jnp.full(x.shape[:1], t), jnp.full(x.shape[:1], s))
    return x


def test_interpolation_euler_and_reflow_loss_match_numpy():
    x0, z = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    t = np.array([0.1, 0.4, 0.7, 1.0])
    x_t = rf.interpolate(x0, z, t)
    np.testing.assert_allclose(x_t, (1 - t[:, None]) * x0 + t[:, None] * z, rtol=1e-6)
    v = RNG.normal(size=(4, 3))
    np.testing.assert_allclose(rf.reflow_loss(v, x0, z), np.mean((v - (z - x0)) ** 2), rtol=1e-5)
    stepped = rf.euler_step(lambda x, t: jnp.asarray(v), x_t, t, t - 0.1)
    np.testing.assert_allclose(stepped, x_t - 0.1 * v, rtol=1e-5)


def test_reflow_of_an_already_straight_flow_is_a_fixed_point():
    z = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
    coupled = euler_ode(straight_field, z, steps=3)  # straight paths: any step count is exact
    np.testing.assert_allclose(coupled, jnp.broadcast_to(POINT, z.shape), atol=1e-5)
    t = jnp.asarray(RNG.uniform(0.05, 1.0, 8), jnp.float32)
    x_t = rf.interpolate(coupled, z, t)
    assert float(rf.reflow_loss(straight_field(x_t, t), coupled, z)) < 1e-9
    assert float(jnp.max(rf.straightness(straight_field, z, coupled, t))) < 1e-9
    one_step = z - straight_field(z, jnp.ones(8))
    assert float(rf.one_step_distillation_loss(one_step, coupled)) < 1e-10
    # A curved flow is not a fixed point: its couplings are not on its own straight interpolations.
    bent = euler_ode(curved_field, z, steps=8)
    assert float(rf.reflow_loss(curved_field(rf.interpolate(bent, z, t), t), bent, z)) > 1e-3


def test_slimflow_annealing_moves_from_random_pairs_to_couplings():
    np.testing.assert_allclose([rf.annealing_beta(k, 100) for k in (0, 50, 100, 500)], [1, 0.5, 0, 0], atol=1e-6)
    coupled, random = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    np.testing.assert_allclose(rf.annealed_noise(coupled, random, 0.0), coupled, rtol=1e-6)
    np.testing.assert_allclose(rf.annealed_noise(coupled, random, 1.0), random, rtol=1e-6)
    np.testing.assert_allclose(
        rf.annealed_noise(coupled, random, 0.36), 0.8 * coupled + 0.6 * random, rtol=1e-5, atol=1e-6
    )
    mixed = rf.annealed_noise(RNG.normal(size=(200_000,)), RNG.normal(size=(200_000,)), 0.3)
    assert abs(float(jnp.std(mixed)) - 1.0) < 0.01


def test_flow_guided_distillation_loss():
    z = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    t_mid = jnp.asarray([0.2, 0.5, 0.7, 0.9])
    two = rf.two_step_prediction(curved_field, z, t_mid)
    x_mid = z - (1 - t_mid[:, None]) * curved_field(z, jnp.ones(4))
    np.testing.assert_allclose(two, x_mid - t_mid[:, None] * curved_field(x_mid, t_mid), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        rf.two_step_prediction(straight_field, z, t_mid), jnp.broadcast_to(POINT, z.shape), atol=1e-5
    )
    student, coupled = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    expected = np.mean((student - coupled) ** 2) + 0.5 * np.mean((student - np.asarray(two)) ** 2)
    got = rf.flow_guided_distillation_loss(student, coupled, two, guide_weight=0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(
        rf.flow_guided_distillation_loss(student, coupled, two, guide_weight=0.0),
        rf.one_step_distillation_loss(student, coupled),
        rtol=1e-6,
    )


def test_traflow_terms():
    x_t = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    t, u = jnp.asarray([0.9, 0.8, 0.6, 0.5]), jnp.asarray([0.4, 0.3, 0.2, 0.1])
    total, terms = rf.traflow_loss(straight_field, straight_field, x_t, t, u, jnp.broadcast_to(POINT, x_t.shape))
    assert float(total) < 1e-9
    teacher_x0 = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    total, terms = rf.traflow_loss(curved_field, straight_field, x_t, t, u, teacher_x0, velocity_weight=2.0)
    x, tn, un = np.asarray(x_t), np.asarray(t)[:, None], np.asarray(u)[:, None]
    v = np.sin(x) + tn * x
    one = x - tn * v
    x_u = x - (tn - un) * v
    two = x_u - un * (np.sin(x_u) + un * x_u)
    np.testing.assert_allclose(terms["reconstruction"], np.mean((one - np.asarray(teacher_x0)) ** 2), rtol=1e-4)
    np.testing.assert_allclose(terms["velocity"], np.mean((v - (x - np.asarray(POINT)) / tn) ** 2), rtol=1e-4)
    np.testing.assert_allclose(terms["consistency"], np.mean((one - two) ** 2), rtol=1e-4)
    np.testing.assert_allclose(total, terms["reconstruction"] + 2 * terms["velocity"] + terms["consistency"], rtol=1e-5)
    grad = jax.grad(lambda x0: rf.traflow_loss(curved_field, straight_field, x_t, t, u, x0)[0])(teacher_x0)
    assert float(jnp.abs(grad).max()) == 0.0


def test_shortcut_target_limits():
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    t = jnp.asarray([1.0, 0.75, 0.5, 0.5])
    h = jnp.asarray([0.25, 0.125, 0.25, 0.0625])
    # Straight paths: the field is its own shortcut at every step size.
    straight = lambda x, t, h: straight_field(x, t)
    np.testing.assert_allclose(rf.shortcut_target(straight, x, t, h), straight_field(x, t), rtol=1e-5, atol=1e-6)
    # d -> 0: the target is the flow's velocity, and the loss reduces to flow matching.
    curved = lambda x, t, h: curved_field(x, t) * (1 + h[:, None])
    zero = jnp.zeros(4)
    np.testing.assert_allclose(rf.shortcut_target(curved, x, t, zero), curved_field(x, t), rtol=1e-6)
    v_teacher = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    total, terms = rf.shortcut_loss(
        curved(x, t, zero), v_teacher, curved(x, t, zero), rf.shortcut_target(curved, x, t, zero)
    )
    assert float(terms["shortcut"]) == 0.0
    np.testing.assert_allclose(total, np.mean((np.asarray(curved_field(x, t)) - np.asarray(v_teacher)) ** 2), rtol=1e-5)
    # Two steps of size h by numpy.
    xn, tn, hn = np.asarray(x), np.asarray(t)[:, None], np.asarray(h)[:, None]
    first = (np.sin(xn) + tn * xn) * (1 + hn)
    x2 = xn - hn * first
    expected = 0.5 * (first + (np.sin(x2) + (tn - hn) * x2) * (1 + hn))
    np.testing.assert_allclose(rf.shortcut_target(curved, x, t, h), expected, rtol=1e-5, atol=1e-6)


def test_shortcut_steps_lie_on_the_grid_of_their_step_size():
    t, h = rf.shortcut_steps(jax.random.key(0), 4096, max_log2=4)
    t, h = np.asarray(t), np.asarray(h)
    assert set(np.round(h, 6)) == {0.5, 0.25, 0.125, 0.0625}
    assert np.all(t - 2 * h >= -1e-7) and np.all(t <= 1 + 1e-7)
    np.testing.assert_allclose(np.round(t / (2 * h)), t / (2 * h), atol=1e-5)
    assert np.any(t == 1.0) and np.any(np.isclose(t, 2 * h))


@pytest.mark.parametrize("family", ["edm", "vp", "flow"])
def test_any_gaussian_path_is_a_rectified_flow_after_a_time_change(family):

    schedule = FAMILIES[family]
    tau = jnp.asarray([0.05, 0.3, 0.7, 0.9] if family != "edm" else [0.01, 0.5, 3.0, 40.0])
    t = rf.flow_time(schedule, tau)
    np.testing.assert_allclose(rf.schedule_time(schedule, t), tau, rtol=2e-3)
    # The exact denoiser of Gaussian data read through the map is the flow path's exact denoiser.
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    t_flow = jnp.asarray([0.1, 0.4, 0.6, 0.8])
    via_map = rf.x0_in_flow_time(gaussian_x0(0.7, family), schedule, 1.0)(x, t_flow)
    np.testing.assert_allclose(via_map, gaussian_x0(0.7, "flow")(x, t_flow), rtol=2e-3, atol=1e-5)

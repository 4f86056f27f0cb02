"""Schedules and parameterisations: EDM's preconditioning identities, the Karras grid, VP against DDPM, the
conversions between x0 / eps / velocity, and the exact-recovery limits of DDIM and rectified-flow Euler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion import samplers, schedules
from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow
from jdistill.errors import ConfigError

FAMILIES = [EDM(), VP(), VP(prediction="x0"), VP(prediction="v"), RectifiedFlow()]


def _times(schedule):
    """Interior times of the schedule's range (EDM: sigmas)."""
    return jnp.array([0.05, 0.3, 0.7, 0.95]) * (40.0 if isinstance(schedule, EDM) else 1.0)


def _data(shape=(4, 3)):
    key_x, key_e = jax.random.split(jax.random.key(0))
    return jax.random.normal(key_x, shape), jax.random.normal(key_e, shape)


def test_edm_preconditioning_is_the_identity_at_sigma_zero():
    edm = EDM()
    x, raw = _data()
    assert float(edm.c_skip(0.0)) == 1.0 and float(edm.c_out(0.0)) == 0.0
    np.testing.assert_array_equal(edm.to_x0(x, jnp.zeros(4), raw), x)
    np.testing.assert_allclose(edm.to_x0(x, jnp.full(4, 1e-6), raw), x, atol=1e-5)


def test_edm_coefficients_match_the_paper():
    edm, sd = EDM(sigma_data=0.5), 0.5
    sigma = np.array([0.002, 0.1, 0.5, 2.0, 80.0])
    np.testing.assert_allclose(edm.c_skip(sigma), sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(edm.c_out(sigma), sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(edm.c_in(sigma), 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(edm.c_noise(sigma), np.log(sigma) / 4, rtol=1e-6)
    np.testing.assert_allclose(edm.loss_weight(sigma), 1 / edm.c_out(sigma) ** 2, rtol=1e-5)
    # the effective training target (x0 - c_skip x) / c_out has unit variance for data of variance sd^2 (EDM B.6)
    target_variance = (sd**2 * (1 - edm.c_skip(sigma)) ** 2 + edm.c_skip(sigma) ** 2 * sigma**2) / edm.c_out(sigma) ** 2
    np.testing.assert_allclose(target_variance, 1.0, rtol=1e-5)


def test_karras_grid_runs_from_sigma_max_to_sigma_min_then_zero():
    edm = EDM(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    grid = edm.timesteps(18)
    assert grid.shape == (19,) and grid[0] == pytest.approx(80.0) and grid[-2] == pytest.approx(0.002)
    assert grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(grid[:-1], expected, rtol=1e-12)
    np.testing.assert_array_equal(edm.timesteps(1), [80.0, 0.0])


def test_vp_is_variance_preserving_and_the_limit_of_ddpm():
    vp = VP()
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, 1.0, rtol=1e-6)
    assert float(vp.sigma(0.0)) == 0.0 and float(vp.alpha(1.0)) < 0.01
    # discrete DDPM (1000 linear betas 1e-4 .. 0.02): abar_i = abar((i + 1) / 1000) up to O(1/N)
    table = schedules.ddpm_alpha_bars(1000)
    index = np.array([0, 99, 299, 499, 799])
    np.testing.assert_allclose(np.exp(vp.log_alpha_bar((index + 1) / 1000)), table[index], rtol=0.02, atol=1e-4)


@pytest.mark.parametrize("schedule", FAMILIES, ids=lambda s: f"{s.name}-{getattr(s, 'prediction', '')}")
def test_the_raw_target_gives_back_x0_and_eps(schedule):
    x0, eps = _data()
    t = _times(schedule)
    x = schedule.add_noise(x0, eps, t)
    raw = schedule.raw_target(x0, eps, t)
    np.testing.assert_allclose(schedule.to_x0(x, t, raw), x0, atol=2e-5)
    np.testing.assert_allclose(schedule.eps_from_x0(x, t, x0), eps, atol=2e-5)
    np.testing.assert_allclose(schedule.x0_from_eps(x, t, eps), x0, atol=2e-5)


@pytest.mark.parametrize("schedule", [EDM(), VP(), RectifiedFlow()], ids=lambda s: s.name)
def test_velocity_is_the_time_derivative_of_the_path(schedule):
    x0, eps = _data()
    t, h = _times(schedule), 1e-3
    x = schedule.add_noise(x0, eps, t)
    numeric = (schedule.add_noise(x0, eps, t + h) - schedule.add_noise(x0, eps, t - h)) / (2 * h)
    velocity = schedule.velocity_from_x0(x, t, x0)
    np.testing.assert_allclose(velocity, numeric, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(schedule.x0_from_velocity(x, t, velocity), x0, atol=1e-4)
    prediction = schedule.from_x0(x, t, x0)
    np.testing.assert_allclose(prediction.eps, eps, atol=2e-5)


def test_rectified_flow_velocity_is_eps_minus_x0():
    flow = RectifiedFlow()
    x0, eps = _data()
    t = jnp.full(4, 0.3)
    np.testing.assert_allclose(flow.raw_target(x0, eps, t), eps - x0)
    np.testing.assert_allclose(flow.add_noise(x0, eps, t), 0.7 * x0 + 0.3 * eps, rtol=1e-6)
    np.testing.assert_allclose(flow.velocity_from_x0(flow.add_noise(x0, eps, t), t, x0), eps - x0, atol=1e-5)


def _oracle(schedule, x0_true):
    """denoise_fn that knows the clean data exactly: its x0 is x0_true (through the schedule's raw output)."""

    def denoise(x, t):
        t = jnp.broadcast_to(t, x.shape[:1])
        eps = schedule.eps_from_x0(x, t, x0_true)
        return schedule.to_x0(x, t, schedule.raw_target(x0_true, eps, t))

    return denoise


@pytest.mark.parametrize("nfe", [1, 3, 10])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_ddim_with_the_true_eps_lands_exactly_on_x0(sampler, nfe):
    vp = VP()
    x0, eps = _data()
    x_T = vp.add_noise(x0, eps, 1.0)
    out = samplers.sample(_oracle(vp, x0), x_T, vp, nfe, sampler=sampler)
    np.testing.assert_allclose(out, x0, atol=1e-4)
    # one DDIM step keeps x on the path of (x0, eps): x_s = alpha_s x0 + sigma_s eps
    x_s = schedules.ddim_step(vp, x_T, 1.0, 0.4, x0)
    np.testing.assert_allclose(x_s, vp.add_noise(x0, eps, 0.4), atol=1e-4)


def test_rectified_flow_euler_with_the_straight_velocity_is_exact_in_one_step():
    flow = RectifiedFlow()
    x0, eps = _data()
    velocity = eps - x0  # the exact velocity of the straight coupling (x0, eps), constant along its line
    out = samplers.sample(lambda x, t: flow.x0_from_velocity(x, t, velocity), eps, flow, 1, sampler="flow_euler")
    np.testing.assert_allclose(out, x0, atol=1e-6)
    out = samplers.sample(lambda x, t: flow.to_x0(x, t, velocity), eps, flow, 4, sampler="flow_euler")
    np.testing.assert_allclose(out, x0, atol=1e-5)


def test_ddim_eta_one_is_ddpm_posterior_variance():
    vp = VP()
    x0 = jnp.zeros((20000, 1))
    t, s = 0.6, 0.3
    x = vp.add_noise(x0, jnp.ones_like(x0), t)
    out = schedules.ddim_step(vp, x, t, s, x0, eta=1.0, noise=jax.random.normal(jax.random.key(1), x.shape))
    a_t, a_s = float(vp.alpha(t)) ** 2, float(vp.alpha(s)) ** 2
    posterior_variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)  # DDPM's beta-tilde
    assert float(jnp.var(out)) == pytest.approx(posterior_variance, rel=0.05)


def test_bad_schedule_names_and_steps_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown schedule 'karras'"):
        schedules.schedule_named("karras")
    with pytest.raises(ConfigError, match="unknown option 'sigma'"):
        schedules.schedule_named("edm", sigma=1.0)
    assert schedules.schedule_named("edm", rho=5.0).rho == 5.0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="expected an integer >= 1"):
            EDM().timesteps(bad)
    with pytest.raises(ConfigError, match="prediction 'score'"):
        VP(prediction="score")
    with pytest.raises(ConfigError, match="sigma_min < sigma_max"):
        EDM(sigma_min=1.0, sigma_max=0.5)

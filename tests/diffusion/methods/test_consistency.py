import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import consistency as cm
from jdistill.diffusion.methods.common import per_example_distance
from tests.diffusion.methods.paths import FAMILIES, gaussian_flow_map, gaussian_x0, np_alpha_sigma, np_ddim

RNG = np.random.default_rng(1)


def test_scalings_follow_consistency_models():
    sigma = np.array([0.002, 0.01, 0.5, 3.0, 80.0])
    c_skip, c_out = cm.consistency_scalings(sigma)
    np.testing.assert_allclose(c_skip, 0.25 / ((sigma - 0.002) ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, (sigma - 0.002) * 0.5 / np.sqrt(sigma**2 + 0.25), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("output", ["raw", "x0"])
def test_boundary_condition_holds_exactly(output):
    x = jnp.asarray(RNG.normal(size=(3, 4, 4)), jnp.float32)
    network = jnp.asarray(RNG.normal(size=(3, 4, 4)) * 100, jnp.float32)
    f = cm.consistency_function(x, network, jnp.full((3,), cm.SIGMA_MIN), output=output)
    assert np.array_equal(np.asarray(f), np.asarray(x))
    far = cm.consistency_function(x, network, jnp.full((3,), 80.0), output=output)
    expected = network if output == "x0" else 0.5 * network
    np.testing.assert_allclose(far, expected, rtol=1e-3, atol=2e-3 * 100)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cd_pair_is_one_ddim_step_of_the_teacher(family):
    x0, noise = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    t_next, t_cur = np.full(4, 0.6), np.full(4, 0.45)
    weight = RNG.normal(size=(3, 3))
    teacher = lambda x, t: jnp.sin(x @ weight) + t[:, None]
    x_next, x_cur = cm.cd_pair(teacher, x0, noise, (t_next, t_cur), FAMILIES[family])
    (a1, s1), (a0, s0) = np_alpha_sigma(family, t_next[:, None]), np_alpha_sigma(family, t_cur[:, None])
    expected_next = a1 * x0 + s1 * noise
    expected_cur = np_ddim(expected_next, np.sin(expected_next @ weight) + 0.6, a1, s1, a0, s0)
    np.testing.assert_allclose(x_next, expected_next, rtol=1e-5)
    np.testing.assert_allclose(x_cur, expected_cur, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_consistency_training_is_distillation_with_the_one_sample_denoiser(family):
    x0, noise = jnp.asarray(RNG.normal(size=(4, 3))), jnp.asarray(RNG.normal(size=(4, 3)))
    times = (np.full(4, 0.7), np.full(4, 0.3))
    oracle = lambda x, t: x0
    cd, ct = cm.cd_pair(oracle, x0, noise, times, FAMILIES[family]), cm.ct_pair(x0, noise, times, FAMILIES[family])
    for got, want in zip(cd, ct, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cd_with_an_exact_ode_step_and_the_exact_consistency_function_has_zero_loss():
    # Gaussian data under EDM: the exact consistency function is the ODE's flow map to sigma_min.
    scale = 0.7
    f_star = lambda x, t: gaussian_flow_map(x, t, jnp.full_like(t, cm.SIGMA_MIN), scale, "edm")
    x0, noise = jnp.asarray(RNG.normal(size=(6, 5)) * scale), jnp.asarray(RNG.normal(size=(6, 5)))
    t_next = jnp.asarray(RNG.uniform(2.0, 5.0, 6))
    x_next = x0 + t_next[:, None] * noise
    for h in (0.1, 0.01):
        x_cur = gaussian_flow_map(x_next, t_next, t_next - h, scale, "edm")  # the exact ODE step
        assert float(cm.consistency_loss(f_star(x_next, t_next), f_star(x_cur, t_next - h))) < 1e-11
    # One DDIM (Euler) step of the exact teacher carries a local error of order h^2.
    errors = []
    for h in (0.2, 0.1, 0.05):
        _, x_cur = cm.cd_pair(gaussian_x0(scale, "edm"), x0, noise, (t_next, t_next - h), FAMILIES["edm"])
        errors.append(float(cm.consistency_loss(f_star(x_next, t_next), f_star(x_cur, t_next - h))))
    assert errors[0] > 0
    np.testing.assert_allclose(np.log2(np.array(errors[:-1]) / errors[1:]), 4.0, atol=0.5)  # squared error ~ h^4


def test_loss_metrics_weights_and_stopped_target():
    a, b = RNG.normal(size=(3, 2, 2)), RNG.normal(size=(3, 2, 2))
    w = np.array([1.0, 2.0, 0.5])
    diff = (a - b).reshape(3, -1)
    np.testing.assert_allclose(cm.consistency_loss(a, b, weights=w), np.mean(w * np.mean(diff**2, -1)), rtol=1e-6)
    np.testing.assert_allclose(cm.consistency_loss(a, b, metric="l1"), np.mean(np.abs(diff)), rtol=1e-6)
    c = 0.00054 * math.sqrt(4)
    huber = np.sqrt(np.sum(diff**2, -1) + c**2) - c
    np.testing.assert_allclose(cm.consistency_loss(a, b, metric="pseudo_huber"), np.mean(huber), rtol=1e-5)
    huber_one = np.sqrt(np.sum(diff**2, -1) + 1) - 1
    np.testing.assert_allclose(per_example_distance(a, b, "pseudo_huber", huber_c=1.0), huber_one, rtol=1e-5)
    grad_target = jax.grad(lambda b: cm.consistency_loss(jnp.asarray(a), b))(jnp.asarray(b))
    assert float(jnp.abs(grad_target).max()) == 0.0
    with pytest.raises(ValueError, match="metric"):
        cm.consistency_loss(a, b, metric="l3")


def test_ict_schedule_weights_and_index_distribution():
    assert cm.ict_discretization_steps(0, 400_000) == 11
    assert cm.ict_discretization_steps(49_999, 400_000) == 11
    assert cm.ict_discretization_steps(50_000, 400_000) == 21
    assert cm.ict_discretization_steps(399_999, 400_000) == 1281
    np.testing.assert_allclose(cm.ict_weights(np.array([2.0, 0.5]), np.array([1.5, 0.4])), [2.0, 10.0], rtol=1e-5)
    sigmas = np.geomspace(0.002, 80.0, 12)
    erf = np.vectorize(math.erf)
    cdf = erf((np.log(sigmas) + 1.1) / (math.sqrt(2) * 2.0))
    np.testing.assert_allclose(cm.ict_index_probabilities(sigmas), np.diff(cdf) / np.sum(np.diff(cdf)), rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heun_teacher_step_is_second_order_and_ddim_at_the_data_end(family):
    # Gaussian data: the exact denoiser and the exact flow map. Heun's one-step error is O(h^3), DDIM's O(h^2).
    scale, schedule = 0.7, FAMILIES[family]
    x = jnp.asarray(RNG.normal(size=(6, 5)))
    t = jnp.full((6,), 0.6 if family != "edm" else 3.0)

    def error(solver, h):
        s = t - h
        got = cm.teacher_step(gaussian_x0(scale, family), x, t, s, schedule, solver=solver)
        return float(jnp.max(jnp.abs(got - gaussian_flow_map(x, t, s, scale, family))))

    hs = (0.08, 0.04) if family != "edm" else (0.4, 0.2)
    heun_order = math.log2(error("heun", hs[0]) / error("heun", hs[1]))
    ddim_order = math.log2(error("ddim", hs[0]) / error("ddim", hs[1]))
    assert 2.5 < heun_order < 3.6, heun_order
    assert error("heun", hs[1]) < error("ddim", hs[1])
    if family == "edm":
        assert 1.5 < ddim_order < 2.5, ddim_order
    # Into the data end (sigma = 0) the correction is undefined: the step is DDIM's, and finite.
    if family != "edm":
        zero = jnp.zeros((6,))
        heun = cm.teacher_step(gaussian_x0(scale, family), x, t, zero, schedule, solver="heun")
        np.testing.assert_array_equal(heun, cm.teacher_step(gaussian_x0(scale, family), x, t, zero, schedule))
    with pytest.raises(ValueError, match="solver"):
        cm.teacher_step(gaussian_x0(scale, family), x, t, t - 0.1, schedule, solver="rk4")

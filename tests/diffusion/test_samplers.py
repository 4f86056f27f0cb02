"""Samplers: exact NFE counts, convergence to a Gaussian target with its analytic denoiser, DPM-Solver++(2M)'s
second order, classifier-free guidance limits, and one-line errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion import samplers
from jdistill.diffusion.denoisers import MLPDenoiser
from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow, expand_to
from jdistill.errors import ConfigError
from tests.diffusion.weights import random_weights

MU, SD = 0.7, 0.3  # the target: N(MU, SD^2) per coordinate


def gaussian_denoiser(schedule):
    """E[x0 | x_t] for x0 ~ N(MU, SD^2): MU + alpha SD^2 / (alpha^2 SD^2 + sigma^2) (x - alpha MU)."""

    def denoise(x, t):
        alpha, sigma = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
        return MU + alpha * SD**2 / (alpha**2 * SD**2 + sigma**2) * (x - alpha * MU)

    return denoise


def counted(denoise_fn, counter):
    """`denoise_fn` that adds 1 to `counter[0]` at every evaluation at run time (a host callback inside the scan)."""

    def bump():
        counter[0] += 1

    def denoise(x, t):
        jax.debug.callback(bump)
        return denoise_fn(x, t)

    return denoise


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_calls_the_denoiser_exactly_nfe_times(sampler):
    schedule = RectifiedFlow()
    x_T, key = jnp.ones((2, 2)), jax.random.key(0)

    def run(nfe, denoise):
        return samplers.sample(denoise, x_T, schedule, nfe, sampler=sampler, rng=key)

    for nfe in (1, 4, 7) if sampler == "heun" else (1, 4):
        counter = [0]
        jax.block_until_ready(jax.jit(run, static_argnums=(0, 1))(nfe, counted(gaussian_denoiser(schedule), counter)))
        assert counter[0] == nfe, (sampler, nfe)


def test_heun_takes_edm_steps_with_a_final_euler_step():
    assert samplers.sampler_steps("heun", 35) == 18 and samplers.sampler_steps("heun", 1) == 1
    assert samplers.sample_grid("heun", EDM(), 35).shape == (19,)
    assert samplers.sampler_steps("dpmpp_2m", 8) == 8


# (schedule, sampler, NFE): each reproduces the target's standard deviation within 1.5% (Heun in VP time is slower)
CONVERGED = [
    (EDM(), "heun", 79),
    (EDM(), "dpmpp_2m", 80),
    (VP(), "dpmpp_2m", 80),
    (RectifiedFlow(), "heun", 79),
]


@pytest.mark.parametrize("schedule,sampler,nfe", CONVERGED, ids=lambda v: getattr(v, "name", v))
def test_sampling_a_gaussian_with_its_exact_denoiser_reproduces_it(schedule, sampler, nfe):
    alpha, sigma = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    z = jax.random.normal(jax.random.key(0), (20000, 1))
    x_T = alpha * MU + np.sqrt(alpha**2 * SD**2 + sigma**2) * z  # the exact marginal at t_max
    out = jax.jit(lambda x: samplers.sample(gaussian_denoiser(schedule), x, schedule, nfe, sampler=sampler))(x_T)
    # the probability-flow ODE maps the marginal's quantiles to the target's: draw by draw, MU + SD z
    np.testing.assert_allclose(out, MU + SD * z, atol=0.06 * SD)
    assert float(out.std()) == pytest.approx(float(SD * z.std()), rel=0.015)
    assert float(out.mean()) == pytest.approx(float(MU + SD * z.mean()), abs=0.01 * SD)


def _closed_form_factor(grid, heun_steps: int) -> float:
    """For a Gaussian the EDM ODE velocity is linear, (x - mu) t / (sd^2 + t^2): the float64 factor that Heun
    steps (on the first `heun_steps` intervals) then Euler steps apply to x - mu."""
    factor = 1.0
    for i, (t, s) in enumerate(itertools.pairwise(grid)):
        d1 = t / (SD**2 + t**2)
        if i < heun_steps:
            d2 = s / (SD**2 + s**2) * (1 + (s - t) * d1)
            factor *= 1 + (s - t) * (d1 + d2) / 2
        else:
            factor *= 1 + (s - t) * d1
    return factor


@pytest.mark.parametrize("sampler,nfe,heun_steps", [("euler", 12, 0), ("heun", 35, 17), ("heun", 8, 3)])
def test_euler_and_heun_match_their_closed_form_on_a_gaussian(sampler, nfe, heun_steps):
    edm = EDM()
    grid = samplers.sample_grid(sampler, edm, nfe)
    x_T = jnp.array([[-80.0], [0.0], [40.0]])
    out = samplers.sample(gaussian_denoiser(edm), x_T, edm, nfe, sampler=sampler)
    np.testing.assert_allclose(out, MU + (x_T - MU) * _closed_form_factor(grid, heun_steps), rtol=1e-4, atol=1e-5)


def test_dpm_solver_2m_is_second_order_and_ddim_first_order():
    """Halving the step size divides the endpoint error by about 4 for DPM-Solver++(2M) and 2 for DDIM."""
    edm = EDM()
    x_T = jnp.linspace(-160.0, 160.0, 9)[:, None]
    exact = MU + (x_T - MU) * SD / np.sqrt(SD**2 + 80.0**2)  # the probability-flow ODE's solution
    denoise = gaussian_denoiser(edm)

    def error(sampler, nfe):
        return float(jnp.max(jnp.abs(samplers.sample(denoise, x_T, edm, nfe, sampler=sampler) - exact)))

    ratio_2m = error("dpmpp_2m", 16) / error("dpmpp_2m", 32)
    ratio_ddim = error("ddim", 16) / error("ddim", 32)
    assert 3.0 < ratio_2m < 6.0, ratio_2m
    assert 1.5 < ratio_ddim < 2.6, ratio_ddim


def test_consistency_sampling_renoises_between_evaluations():
    flow = RectifiedFlow()
    x_T, rng = jnp.full((3, 2), 2.0), jax.random.key(4)

    def denoise(x, t):
        return 0.5 * x + t  # any function of (x, t)

    one = samplers.sample(denoise, x_T, flow, 1, sampler="consistency", rng=rng)
    np.testing.assert_allclose(one, denoise(x_T, 1.0))
    two = samplers.sample(denoise, x_T, flow, 2, sampler="consistency", rng=rng)
    (key,) = jax.random.split(rng, 1)
    tau = flow.timesteps(2)[1]
    renoised = flow.add_noise(denoise(x_T, 1.0), jax.random.normal(key, x_T.shape), tau)
    np.testing.assert_allclose(two, denoise(renoised, tau), rtol=1e-6)


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_consistency_sampling_never_evaluates_at_the_edm_boundary(nfe):
    # f(x, sigma_min) = x, so an evaluation there is wasted: the n evaluations are at the n largest of n + 1 Karras
    # sigmas down to sigma_min.
    edm, seen = EDM(), []

    def denoise(x, t):
        jax.debug.callback(lambda t: seen.append(float(t)), t)
        return x

    x_T, rng = jnp.ones((2, 2)), jax.random.key(0)
    jax.block_until_ready(samplers.sample(denoise, x_T, edm, nfe, sampler="consistency", rng=rng))
    expected = edm.timesteps(nfe + 1)[:nfe]
    np.testing.assert_allclose(sorted(seen, reverse=True), expected, rtol=1e-6)
    assert min(seen) > edm.sigma_min
    np.testing.assert_array_equal(samplers.consistency_grid(edm, nfe), edm.timesteps(nfe + 1)[:-1])
    np.testing.assert_array_equal(samplers.consistency_grid(RectifiedFlow(), nfe), RectifiedFlow().timesteps(nfe))


class LabelModel:
    """A conditional 'denoiser' whose raw output is its label (the null class is 3): guidance is read off it."""

    num_classes, null_label, guidance_conditioning = 3, 3, False

    def __call__(self, x, t, labels):
        return jnp.zeros_like(x) + labels.astype(x.dtype)[:, None]


def test_guidance_scale_one_is_conditional_zero_unconditional():
    flow, model = RectifiedFlow(), LabelModel()
    x, t, labels = jnp.ones((2, 2)), jnp.float32(0.5), jnp.array([0, 2])
    conditional = flow.to_x0(x, t, jnp.array([[0.0], [2.0]]) * jnp.ones((2, 2)))
    unconditional = flow.to_x0(x, t, jnp.full((2, 2), 3.0))
    np.testing.assert_allclose(samplers.guided_denoiser(model, flow, labels, 1.0)(x, t), conditional)
    np.testing.assert_allclose(samplers.guided_denoiser(model, flow, labels, 0.0)(x, t), unconditional, rtol=1e-6)
    guided = samplers.guided_denoiser(model, flow, labels, 3.0)(x, t)
    np.testing.assert_allclose(guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-5)


def test_make_sampler_runs_a_guided_module_under_jit():
    model = random_weights(lambda: MLPDenoiser(EDM(), hidden=16, num_layers=1, num_classes=2, rngs=nnx.Rngs(0)))
    run, params = samplers.make_sampler(model, EDM(), sampler="dpmpp_2m", nfe=3, guidance_scale=2.0)
    out = run(params, jnp.ones((4, 2)), jnp.array([0, 1, 0, 1]), jax.random.key(0))
    assert out.shape == (4, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_sampler_input_is_a_one_line_error():
    edm = EDM()
    unconditional = nnx.eval_shape(lambda: MLPDenoiser(edm, hidden=8, num_layers=1, rngs=nnx.Rngs(0)))
    cases = [
        (lambda: samplers.check_sampler("euler_a", edm, 4), "unknown sampler 'euler_a'"),
        (lambda: samplers.check_sampler("heun", edm, 0), "nfe: expected an integer >= 1, got 0"),
        (lambda: samplers.check_sampler("flow_euler", edm, 4), "flow_euler integrates a rectified flow"),
        (lambda: samplers.make_sampler(unconditional, edm, guidance_scale=2.0), "the denoiser is unconditional"),
        (lambda: samplers.sample(lambda x, t: x, jnp.ones((1, 2)), edm, 2, sampler="consistency"), "needs an rng"),
        (lambda: samplers.sample_grid("euler", edm, 4, timesteps=[1.0, 0.0]), "needs 5 times"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=None) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion import samplers
from jdistill.diffusion.methods.common import teacher_trajectory
from jdistill.diffusion.schedules import EDM, RectifiedFlow, predict
from jdistill.recipes.diffusion_rectified import VARIANTS, DiffusionRectified
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    defaults = dict(
        teacher_run="fake",
        data="8gaussians",
        class_conditional=False,
        num_couplings=64,
        coupling_steps=4,
        total_steps=10,
        steps_per_epoch=1.0,
    )
    if options.get("variant") == "slimflow":
        defaults["init_from_teacher"] = False
    return DiffusionRectified(**{**defaults, **options})


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_samples(monkeypatch, variant):
    fake_teacher.install(monkeypatch, RectifiedFlow())
    r = recipe(variant=variant)
    graphdef, params, state = fake_teacher.student_of(r, hidden=8 if variant == "slimflow" else 16)

    def f(params, epoch):
        return r.loss(nnx.merge(graphdef, params), None, state, fake_teacher.batch(epoch), jax.random.key(0))[0]

    for epoch in (0.0, 9.0):  # reflow / slimflow: both phases
        value, grads = jax.value_and_grad(f)(params, epoch)
        assert np.isfinite(float(value)) and float(value) > 0
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params), nfe=2)
    assert run(sampler_params, jnp.ones((3, 2)), None, jax.random.key(0)).shape == (3, 2)


def test_couplings_are_the_teachers_ode(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, RectifiedFlow())
    r = recipe()
    _, _, state = fake_teacher.student_of(r)
    couplings = state["couplings"]
    assert couplings["trajectory"].shape == (5, 64, 2)
    x0_fn = lambda x, t: predict(teacher.schedule, teacher.model, x, t).x0
    expected = teacher_trajectory(x0_fn, couplings["noise"][:5], teacher.schedule.timesteps(4), teacher.schedule)
    np.testing.assert_allclose(couplings["trajectory"][:, :5], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_phase_switch_and_shortcut_student_start(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, RectifiedFlow())
    r = recipe(variant="reflow", reflow_fraction=0.5)
    graphdef, params, state = fake_teacher.student_of(r)
    student = nnx.merge(graphdef, params)
    _, early, _ = r.loss(student, None, state, fake_teacher.batch(4.0), jax.random.key(0))
    _, late, _ = r.loss(student, None, state, fake_teacher.batch(5.0), jax.random.key(0))
    assert float(early["reflow_phase"]) == 1.0 and float(late["reflow_phase"]) == 0.0
    # The shortcut student starts as the teacher at every step size.
    s = recipe(variant="shortcut")
    graphdef, params, _ = fake_teacher.student_of(s)
    x, t = jax.random.normal(jax.random.key(1), (4, 2)), jnp.full((4,), 0.5)
    want = predict(teacher.schedule, teacher.model, x, t).velocity
    for h in (0.0, 0.25, 1.0):
        got = predict(teacher.schedule, nnx.merge(graphdef, params), x, t, None, jnp.full((4,), h)).velocity
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_an_edm_teachers_couplings_are_its_own_ddim_solve(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, EDM())
    r = recipe()
    _, _, state = fake_teacher.student_of(r)
    couplings = state["couplings"]
    x0_fn = lambda x, t: predict(teacher.schedule, teacher.model, x, t).x0
    z = couplings["noise"][:6]
    ddim = samplers.sample(x0_fn, teacher.schedule.sigma_max * z, teacher.schedule, 4, sampler="ddim")
    np.testing.assert_allclose(couplings["trajectory"][-1, :6], ddim, rtol=2e-3, atol=2e-3)
    assert isinstance(r.schedule, RectifiedFlow)


def test_bad_options(monkeypatch):
    fake_teacher.install(monkeypatch, EDM())
    with pytest.raises(ValueError, match="init_from_teacher"):
        DiffusionRectified(teacher_run="fake", data="8gaussians", class_conditional=False, variant="slimflow")
    with pytest.raises(ValueError, match="variant"):
        recipe(variant="instaflow")

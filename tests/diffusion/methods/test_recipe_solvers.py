import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion import samplers
from jdistill.diffusion.methods.wrappers import path_name
from jdistill.diffusion.schedules import EDM, VP, predict
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_solvers import DiffusionSolvers
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    defaults = dict(
        teacher_run="fake", data="8gaussians", class_conditional=False, student_steps=2, substeps=2, teacher_steps=8
    )
    return DiffusionSolvers(**{**defaults, **options})


def loss_and_grads(r, graphdef, params, state):
    def f(params):
        student = nnx.merge(graphdef, r.forward_params(params))
        return r.loss(student, None, state, fake_teacher.batch(), jax.random.key(0))[0]

    return jax.value_and_grad(f)(params)


@pytest.mark.slow
def test_sfd_is_zero_for_the_teacher_with_one_substep_and_trains_otherwise(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    graphdef, params, state = fake_teacher.student_of(recipe(substeps=1))
    value, _ = loss_and_grads(recipe(substeps=1, metric="l2"), graphdef, params, state)
    assert float(value) < 1e-9
    r = recipe()
    value, grads = loss_and_grads(r, graphdef, params, state)
    assert float(value) > 1e-4 and max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
    np.testing.assert_allclose(r.student_grid, VP().timesteps(4)[::2])
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params))
    assert run(sampler_params, jnp.ones((3, 2)), None, jax.random.key(0)).shape == (3, 2)
    with pytest.raises(ConfigError, match="samples with its 2 steps"):
        r.student_sampler(nnx.merge(graphdef, params), 3)


@pytest.mark.slow
def test_dode_trains_only_its_lambdas_and_starts_as_ddim(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, VP())
    r = recipe(variant="dode")
    graphdef, params, state = fake_teacher.student_of(r)
    value, grads = loss_and_grads(r, graphdef, params, state)
    assert float(value) > 0
    moving = {path_name(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0] if float(jnp.abs(g).max()) > 0}
    assert moving == {"lambdas"}
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params))
    x = jax.random.normal(jax.random.key(1), (4, 2))
    x0_fn = lambda x, t: predict(teacher.schedule, teacher.model, x, t).x0
    ddim = samplers.sample(x0_fn, x, teacher.schedule, 2, sampler="ddim")
    np.testing.assert_allclose(run(sampler_params, x, None, jax.random.key(0)), ddim, rtol=1e-5, atol=1e-5)


def test_bad_options(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    for bad in ({"variant": "dpm"}, {"teacher_steps": 2}, {"rollout": "mixed"}):
        with pytest.raises(ValueError):
            recipe(**bad)


def test_dode_freezes_everything_but_its_lambdas(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    r = recipe(variant="dode")
    _, params, _ = fake_teacher.student_of(r)
    grads = jax.grad(lambda p: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(r.forward_params(p))))(params)
    moving = {path_name(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0] if float(jnp.abs(g).max()) > 0}
    assert moving == {"lambdas"}
    np.testing.assert_array_equal(params["lambdas"][...], 0.0)


@pytest.mark.slow
def test_sfd_v_starts_as_the_teacher_trains_its_step_condition_and_samples_each_count(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, EDM())  # Karras grids: k of 2k steps is not the k-step grid
    exact = recipe(substeps=1, step_counts=(2, 3), metric="l2")
    graphdef, params, state = fake_teacher.student_of(exact)
    value = exact.loss(nnx.merge(graphdef, params), None, state, fake_teacher.batch(), jax.random.key(0))[0]
    assert float(value) < 1e-9  # the zero-initialised condition leaves the teacher's weights as they were
    r = recipe(step_counts=(2, 3))
    value, grads = loss_and_grads(r, graphdef, params, state)
    condition = [g for p, g in jax.tree_util.tree_flatten_with_path(grads)[0] if "guidance" in path_name(p)]
    assert float(value) > 1e-4 and max(float(jnp.abs(g).max()) for g in condition) > 0
    # a trained condition (at init it has no effect): the sampler must tell the student its own count
    moved = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.3 if "guidance" in path_name(p) else v, params)
    student = nnx.merge(graphdef, moved)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    for nfe in (2, 3):
        run, sampler_params = r.student_sampler(student, nfe)
        told = lambda x, t, h=1.0 / nfe: predict(teacher.schedule, student, x, t, None, jnp.full((4,), h)).x0
        grid = EDM().timesteps(2 * nfe)[::2]
        ddim = samplers.sample(told, x, teacher.schedule, nfe, sampler="ddim", timesteps=grid)
        np.testing.assert_allclose(run(sampler_params, x, None, jax.random.key(0)), ddim, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"one of its step_counts \[2, 3\]"):
        r.student_sampler(student, 4)
    with pytest.raises(ValueError, match="step_counts"):
        recipe(variant="dode", step_counts=(2, 3))

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion import samplers
from jdistill.diffusion.methods import solvers
from jdistill.diffusion.schedules import ddim_step, expand_to
from tests.diffusion.methods.paths import FAMILIES, gaussian_x0, np_alpha_sigma, np_ddim

RNG = np.random.default_rng(5)
WEIGHT = RNG.normal(size=(3, 3)) * 0.6


def nonlinear_x0(x, t):
    """A smooth nonlinear denoiser; `t` a scalar (as the samplers pass it) or `[batch]`."""
    return jnp.tanh(x @ WEIGHT) * (1.0 + 0.1 * expand_to(t, x))


@pytest.mark.parametrize("family", ["edm", "vp"])
def test_dode_at_lambda_zero_is_the_base_ddim_solver(family):
    schedule = FAMILIES[family]
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32) * schedule.sigma(schedule.t_max)
    grid = schedule.timesteps(4)
    ours = solvers.dode_sample(nonlinear_x0, x, schedule, grid, jnp.zeros(4))
    base = samplers.sample(nonlinear_x0, x, schedule, 4, sampler="ddim")
    np.testing.assert_allclose(ours, base, rtol=1e-6, atol=1e-6)


def test_dode_mixes_the_current_and_previous_outputs():
    schedule = FAMILIES["flow"]
    grid = np.array([1.0, 0.6, 0.3, 0.0])
    lambdas = np.array([0.7, -0.4, 0.25])
    x = RNG.normal(size=(2, 3))
    expected, previous = x, None
    for i, (t, s) in enumerate(itertools.pairwise(grid)):
        x0 = np.tanh(expected @ WEIGHT) * (1 + 0.1 * t)
        mixed = x0 if previous is None else x0 + lambdas[i] * (x0 - previous)
        (a_t, s_t), (a_s, s_s) = np_alpha_sigma("flow", t), np_alpha_sigma("flow", s)
        expected, previous = np_ddim(expected, mixed, a_t, s_t, a_s, s_s), x0
    got = solvers.dode_sample(nonlinear_x0, x, schedule, grid, lambdas)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fitting_dode_moves_few_steps_toward_the_many_step_solver():
    schedule = FAMILIES["vp"]
    denoise = gaussian_x0(0.5, "vp")
    x = jnp.asarray(RNG.normal(size=(64, 2)), jnp.float32)
    target = samplers.sample(denoise, x, schedule, 64, sampler="ddim")
    grid = schedule.timesteps(3)
    lambdas, losses = solvers.fit_dode(denoise, x, target, schedule, grid, steps=30, learning_rate=0.1)
    assert float(losses[-1]) < 0.5 * float(losses[0])
    np.testing.assert_allclose(
        losses[0], solvers.dode_loss(jnp.zeros(3), denoise, x, schedule, grid, target), rtol=1e-5
    )
    assert float(jnp.abs(lambdas).max()) > 0.01


def test_sfd_is_zero_for_a_student_equal_to_a_one_substep_teacher_and_compares_to_substeps():
    schedule = FAMILIES["edm"]
    x = jnp.asarray(RNG.normal(size=(3, 3)), jnp.float32) * 80.0
    teacher_grid = schedule.timesteps(4)
    loss, last = solvers.sfd_loss(nonlinear_x0, nonlinear_x0, x, schedule, teacher_grid, 1)
    assert float(loss) < 1e-6
    np.testing.assert_allclose(
        last,
        samplers.sample(nonlinear_x0, x, schedule, 4, sampler="ddim", timesteps=teacher_grid),
        rtol=1e-5,
        atol=1e-5,
    )
    # Two student steps against two teacher sub-steps each, teacher rollout, l1.
    student = lambda x, t: nonlinear_x0(x, t) * 0.9
    loss, _ = solvers.sfd_loss(student, nonlinear_x0, x, schedule, teacher_grid, 2)
    xs, errors = np.asarray(x), []
    for i in range(2):
        t, m, s = teacher_grid[2 * i : 2 * i + 3]
        mid = np_ddim(xs, np.tanh(xs @ WEIGHT) * (1 + 0.1 * t), 1, t, 1, m)
        end = np_ddim(mid, np.tanh(mid @ WEIGHT) * (1 + 0.1 * m), 1, m, 1, s)
        mine = np_ddim(xs, 0.9 * np.tanh(xs @ WEIGHT) * (1 + 0.1 * t), 1, t, 1, s)
        errors.append(np.mean(np.abs(mine - end)))
        xs = end
    np.testing.assert_allclose(loss, np.mean(errors), rtol=1e-4)
    np.testing.assert_allclose(solvers.sfd_grids(teacher_grid, 2), teacher_grid[::2])
    with pytest.raises(ValueError, match="multiple"):
        solvers.sfd_grids(teacher_grid, 3)


def test_sfd_student_rollout_feeds_the_students_own_states():
    schedule = FAMILIES["flow"]
    x = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
    teacher_grid = schedule.timesteps(4)
    student = lambda x, t: nonlinear_x0(x, t) * 0.5
    _, last = solvers.sfd_loss(student, nonlinear_x0, x, schedule, teacher_grid, 2, rollout="student")
    expected = x
    for t, s in zip(teacher_grid[:-1:2], teacher_grid[2::2], strict=True):
        t_b, s_b = jnp.full((2,), t), jnp.full((2,), s)
        expected = ddim_step(schedule, expected, t_b, s_b, student(expected, t_b))
    np.testing.assert_allclose(last, expected, rtol=1e-5, atol=1e-6)


def test_sfd_v_takes_sfd_on_the_drawn_counts_grid_with_the_student_told_one_over_that_count():
    schedule = FAMILIES["vp"]
    x = jnp.asarray(RNG.normal(size=(3, 3)), jnp.float32)
    student_at = lambda h: lambda x, t: nonlinear_x0(x, t) * (0.8 + h)  # a student that depends on its condition
    values = []
    for index, k in enumerate((2, 3, 4)):
        got = solvers.sfd_v_loss(student_at, nonlinear_x0, x, schedule, (2, 3, 4), 2, jnp.int32(index))
        grid = schedule.timesteps(2 * k)
        expected, _ = solvers.sfd_loss(student_at(1.0 / k), nonlinear_x0, x, schedule, grid, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        values.append(float(got))
    assert len(set(values)) == 3  # each count its own grid and condition
    with pytest.raises(ValueError, match="step_counts"):
        solvers.sfd_v_loss(student_at, nonlinear_x0, x, schedule, (), 2, 0)

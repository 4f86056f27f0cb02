import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.schedules import VP
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_progressive import DiffusionProgressive
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    defaults = dict(
        teacher_run="fake",
        data="8gaussians",
        class_conditional=False,
        initial_steps=8,
        final_steps=2,
        total_steps=20,
        steps_per_epoch=1.0,
    )
    return DiffusionProgressive(**{**defaults, **options})


def test_rounds_halve_the_student_steps_on_nested_grids(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    r = recipe()
    assert (r.rounds, r.steps_per_round) == (2, 10)
    grid = np.asarray(r.grid, np.float32)
    for step, stride in ((0, 2), (9, 2), (10, 4), (19, 4), (25, 4)):
        round_index, (t, m, s) = r.student_times(jax.random.key(step), 256, step)
        assert int(round_index) == stride // 2 - 1
        index = np.argmin(np.abs(grid[None] - np.asarray(t)[:, None]), axis=1)
        assert set(index) == set(range(0, 8, stride))
        np.testing.assert_allclose(m, grid[index + stride // 2], atol=1e-6)
        np.testing.assert_allclose(s, grid[index + stride], atol=1e-6)


@pytest.mark.slow
def test_loss_trains(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)

    def f(params):
        return r.loss(nnx.merge(graphdef, params), None, state, fake_teacher.batch(3.0), jax.random.key(0))[0]

    value, grads = jax.value_and_grad(f)(params)
    assert np.isfinite(float(value)) and float(value) > 0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_the_student_becomes_the_next_teacher_at_each_round_end(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    r = recipe()
    _, params, state = fake_teacher.student_of(r)
    moved = jax.tree.map(lambda p: p + 1.0, params)
    inside = r.after_update(state, moved, 7)
    boundary = r.after_update(state, moved, 10)
    last = r.after_update(state, moved, 20)
    for old, kept, new, final, want in zip(
        *(jax.tree.leaves(x["teacher"]) for x in (state, inside, boundary, last)), jax.tree.leaves(moved), strict=True
    ):
        np.testing.assert_array_equal(kept, old)
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(final, old)  # no round starts after the last one


@pytest.mark.slow
def test_sampler_and_options(monkeypatch):
    fake_teacher.install(monkeypatch, VP())
    r = recipe()
    graphdef, params, _ = fake_teacher.student_of(r)
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params), 2)
    assert run(sampler_params, jnp.ones((3, 2)), None, jax.random.key(0)).shape == (3, 2)
    with pytest.raises(ConfigError, match="divisor"):
        r.student_sampler(nnx.merge(graphdef, params), 3)
    with pytest.raises(ValueError, match="powers of two"):
        recipe(initial_steps=12)
    with pytest.raises(ValueError, match="weighting"):
        recipe(weighting="snr")

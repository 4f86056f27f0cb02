"""LADD (recipe diffusion_ladd): discriminator heads on the frozen teacher's features, hinge losses, logit-normal
discriminator times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.methods import adversarial
from jdistill.diffusion.schedules import EDM
from jdistill.recipes.diffusion_ladd import DISCRIMINATOR, DiffusionLADD
from tests.diffusion.methods import fake_teacher
from tests.recipes.test_diffusion_dmd import BATCH, leaves_equal, stepper


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


def recipe(**options):
    return DiffusionLADD(**{**dict(teacher_run="fake", data="8gaussians", class_conditional=False), **options})


def test_logit_normal_times_lean_to_high_noise():
    schedule = EDM()
    sigma = lambda mean: np.asarray(adversarial.logit_normal_times(schedule, jax.random.key(0), 4096, mean, 1.0))
    low, mid, high = sigma(-1.0), sigma(0.0), sigma(1.0)
    grid = schedule.timesteps(1000)
    assert high.max() <= grid[0] and low.min() >= grid[-2]
    assert np.median(low) < np.median(mid) < np.median(high)
    # m = 0: the median draw is the middle of the grid
    assert np.median(mid) == pytest.approx(grid[500], rel=0.1)


@pytest.mark.slow
def test_ladd_losses_are_the_hinge_losses_of_the_heads_on_the_teachers_features(mlp_teacher):
    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)
    assert "fake_score" not in state
    heads = state[DISCRIMINATOR]["params"]
    key = jax.random.key(1)

    @jax.jit
    def run(params, heads):
        student = nnx.merge(graphdef, params)
        value, _, _ = r.loss(student, None, state, BATCH, key)
        # the same draws as the generator's loss
        sample_key, time_key, noise_key = jax.random.split(key, 3)
        x, labels = r.generator_sample(student, sample_key, 8)
        t = r.disc_times(time_key, 8)
        logits = r.logits(heads, state, x, t, jax.random.normal(noise_key, x.shape), labels)
        d_value, _ = r.discriminator_loss(heads, student, None, state, BATCH, key)
        sample_key, data_key, time_key, noise_key = jax.random.split(key, 4)
        x, _ = r.generator_sample(student, sample_key, 8)
        real, _ = r.clean_data(BATCH, data_key)
        t_real, t_fake = jnp.split(r.disc_times(time_key, 16), 2)
        eps_real, eps_fake = jax.random.normal(noise_key, (2, *x.shape))
        real_logits = r.logits(heads, state, real, t_real, eps_real, None)
        fake_logits = r.logits(heads, state, x, t_fake, eps_fake, None)
        return value, logits, d_value, real_logits, fake_logits

    value, logits, d_value, real_logits, fake_logits = run(params, heads)
    np.testing.assert_allclose(float(value), -float(jnp.mean(logits)), rtol=1e-5)
    hinge = np.maximum(0, 1 - np.asarray(real_logits)).mean() + np.maximum(0, 1 + np.asarray(fake_logits)).mean()
    np.testing.assert_allclose(float(d_value), hinge, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda p: r.loss(nnx.merge(graphdef, p), None, state, BATCH, key)[0]))(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0  # through the teacher's features


@pytest.mark.slow
def test_one_ladd_step_moves_the_heads_and_the_generator(mlp_teacher):
    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)
    new, metrics = stepper(r, graphdef)(params, state)
    assert bool(metrics["finite"]) and f"{DISCRIMINATOR}_real_logit" in metrics
    assert not leaves_equal(new.recipe_state[DISCRIMINATOR]["params"], state[DISCRIMINATOR]["params"])
    assert not leaves_equal(new.params, params)
    assert leaves_equal(new.recipe_state["teacher"], state["teacher"])  # the teacher is frozen


def test_bad_ladd_options():
    with pytest.raises(ValueError, match="time_std"):
        DiffusionLADD(time_std=0.0)

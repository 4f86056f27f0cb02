"""DMD2's GAN term on the fake score's features and Flash-DMD (recipe diffusion_dmd, `gan_weight`, variant flash)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.schedules import EDM
from jdistill.recipes.diffusion_dmd import FAKE_SCORE, DiffusionDMD
from tests.diffusion.methods import fake_teacher
from tests.recipes.test_diffusion_dmd import BATCH, leaves_equal, stepper


def recipe(**options):
    defaults = dict(teacher_run="fake", data="8gaussians", class_conditional=False, variant="dmd2", gan_weight=0.5)
    return DiffusionDMD(**{**defaults, **options})


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


@pytest.mark.slow
def test_the_gan_term_trains_the_head_and_reaches_the_generator_through_the_fake_scores_features(mlp_teacher):
    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)
    assert set(state[FAKE_SCORE]["params"]) == {"score", "head"}
    assert leaves_equal(state[FAKE_SCORE]["params"]["score"], state["teacher"])
    key = jax.random.key(1)

    @jax.jit
    def losses(params, state):
        generator = nnx.merge(graphdef, params)
        value, metrics, _ = r.loss(generator, None, state, BATCH, key)
        fake_params = state[FAKE_SCORE]["params"]
        fake, fake_metrics = r.fake_score_loss(fake_params, generator, None, state, BATCH, key)
        plain, _ = r.__class__(**{**vars(r), "gan_classifier_weight": 0.0}).fake_score_loss(
            fake_params, generator, None, state, BATCH, key
        )
        return value, metrics, fake, fake_metrics, plain

    value, metrics, fake, fake_metrics, plain = losses(params, state)
    # at the start the fake score is the teacher: the distribution-matching term is 0, the GAN term is all there is
    assert float(metrics["distribution_matching"]) < 1e-12
    np.testing.assert_allclose(float(value), 0.5 * float(metrics["gan"]), rtol=1e-6)
    np.testing.assert_allclose(float(fake), float(plain) + 0.01 * float(fake_metrics["gan_classifier"]), rtol=1e-5)
    grads = jax.jit(jax.grad(lambda p: r.loss(nnx.merge(graphdef, p), None, state, BATCH, key)[0]))(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0  # through the features to the generator


@pytest.mark.slow
def test_one_two_network_step_with_the_gan_term_moves_the_head(mlp_teacher):
    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)
    new, step_metrics = stepper(r, graphdef)(params, state)
    assert bool(step_metrics["finite"]) and f"{FAKE_SCORE}_gan_classifier" in step_metrics
    assert not leaves_equal(new.recipe_state[FAKE_SCORE]["params"]["head"], state[FAKE_SCORE]["params"]["head"])
    assert not leaves_equal(new.params, params)


def test_flash_dmd_options_are_checked():
    with pytest.raises(ValueError, match="variant flash"):
        DiffusionDMD(variant="flash", generator_steps=1, gan_weight=0.1)
    with pytest.raises(ValueError, match="variant flash"):
        DiffusionDMD(variant="flash", generator_steps=4, flash_split=4, gan_weight=0.1)
    with pytest.raises(ValueError, match="variant flash"):
        DiffusionDMD(variant="flash", generator_steps=4, gan_weight=0.0)
    with pytest.raises(ValueError, match="gan_weight"):
        DiffusionDMD(gan_weight=-1.0)

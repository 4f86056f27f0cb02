"""Phased DMD (recipe diffusion_phased_dmd): the phase follows the step, the generator trains one step per phase, and
at the start (fake score = teacher) the matching loss is zero while the fake score's subinterval loss is not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.methods import phased
from jdistill.diffusion.schedules import EDM
from jdistill.recipes.diffusion_dmd import FAKE_SCORE
from jdistill.recipes.diffusion_phased_dmd import DiffusionPhasedDMD
from tests.diffusion.methods import fake_teacher
from tests.recipes.test_diffusion_dmd import BATCH


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


@pytest.mark.slow
def test_phased_dmd_follows_the_phases(mlp_teacher):
    r = DiffusionPhasedDMD(
        teacher_run="fake", data="8gaussians", class_conditional=False, total_steps=100, steps_per_epoch=10.0
    )
    graphdef, params, state = fake_teacher.student_of(r)
    key = jax.random.key(1)

    @jax.jit
    def run(params, epoch):
        student = nnx.merge(graphdef, params)
        batch = dict(BATCH, epoch=epoch)
        value, metrics, _ = r.loss(student, None, state, batch, key)
        fake, _ = r.fake_score_loss(state[FAKE_SCORE]["params"], student, None, state, batch, key)
        x_s, x0, s, _, _ = r.phase_sample(student, batch, key, 8)
        return value, metrics["phase"], fake, x_s, x0, s

    times = r.times()
    for epoch, phase in ((0.0, 0), (4.9, 0), (5.0, 1), (9.9, 1)):
        value, got, fake, x_s, x0, s = run(params, jnp.float32(epoch))
        assert int(got) == phase and float(value) < 1e-12 and float(fake) > 0
        np.testing.assert_allclose(s, phased.boundaries(times)[phase])
        assert (float(jnp.abs(x_s - x0).max()) > 0) == (phase == 0)  # the last phase's output is the data
    # the generator's gradient flows only through its phase's step, and reaches it
    grads = jax.grad(lambda p: run(p, jnp.float32(0.0))[3].sum())(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_phased_dmd_needs_several_steps():
    with pytest.raises(ValueError, match="generator_steps >= 2"):
        DiffusionPhasedDMD(generator_steps=1)

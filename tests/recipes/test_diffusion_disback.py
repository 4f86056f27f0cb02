"""DisBack (recipe diffusion_disback): the degradation path is recorded at init, the fake score starts at its end, and
the real score of each step is the path checkpoint of the backtracking schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.objectives import teacher_loss
from jdistill.diffusion.schedules import EDM
from jdistill.recipes.diffusion_disback import DiffusionDisBack
from jdistill.recipes.diffusion_dmd import FAKE_SCORE, DiffusionDMD
from tests.diffusion.methods import fake_teacher
from tests.recipes.test_diffusion_dmd import BATCH, leaves_equal


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


@pytest.mark.slow
def test_disback_records_the_path_and_walks_it_back(mlp_teacher):
    options = dict(teacher_run="fake", data="8gaussians", class_conditional=False)
    r = DiffusionDisBack(
        **options, path_checkpoints=2, degrade_steps=40, degrade_learning_rate=1e-2, degrade_batch=64,
        total_steps=100, steps_per_epoch=10.0,
    )  # fmt: skip
    graphdef, params, state = fake_teacher.student_of(r)
    path = state["path"]
    at = lambda i: jax.tree.map(lambda p: p[i], path)
    assert leaves_equal(at(0), state["teacher"])
    assert leaves_equal(state[FAKE_SCORE]["params"], at(2))
    plain = DiffusionDMD(**options, variant="dmd2")
    key = jax.random.key(1)

    @jax.jit
    def run(params):
        generator = nnx.merge(graphdef, params)
        x, _ = r.generator_sample(generator, key, 256)
        fits = [jnp.mean(teacher_loss(r.schedule, r.denoiser_module(at(i)), x, jax.random.key(2))[0]) for i in range(3)]
        out = {"fits": jnp.stack(fits)}
        for epoch, index in ((0.0, 1), (2.4, 1), (2.5, 0), (9.0, 0)):
            batch = dict(BATCH, epoch=jnp.float32(epoch))
            value, metrics, _ = r.loss(generator, None, state, batch, key)
            want, _, _ = plain.loss(generator, None, dict(state, teacher=at(index)), batch, key)
            out[str(epoch)] = (value, metrics["path_index"], want)
        return out

    out = run(params)
    fits = np.asarray(out.pop("fits"))
    assert fits[2] < fits[1] < fits[0], fits  # the path degrades toward the generator's samples
    for epoch, (value, index, want) in out.items():
        assert int(index) == (1 if float(epoch) < 2.5 else 0), epoch
        np.testing.assert_allclose(float(value), float(want), rtol=1e-6)


def test_bad_disback_options():
    with pytest.raises(ValueError, match="variant dmd2"):
        DiffusionDisBack(variant="dmd")
    with pytest.raises(ValueError, match="path_checkpoints"):
        DiffusionDisBack(path_checkpoints=4, degrade_steps=2)

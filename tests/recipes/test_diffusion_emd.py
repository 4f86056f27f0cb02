"""EMD (recipe diffusion_emd): the M-step is DMD's update at the latents the E-step refined; zero steps or a zero step
size leave the generator's own draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.methods import dmd
from jdistill.diffusion.schedules import EDM
from jdistill.recipes.diffusion_dmd import FAKE_SCORE
from jdistill.recipes.diffusion_emd import DiffusionEMD
from tests.diffusion.methods import fake_teacher
from tests.recipes.test_diffusion_dmd import BATCH


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


@pytest.mark.slow
def test_emd_refines_the_latents_then_matches_distributions(mlp_teacher):
    options = dict(teacher_run="fake", data="8gaussians", class_conditional=False)
    base = DiffusionEMD(**options, mcmc_steps=0)
    graphdef, params, state = fake_teacher.student_of(base)
    # a fake score off the teacher, so the score difference (and the E-step's pull) is not zero
    moved = jax.tree.map(lambda x: x * 1.1, state[FAKE_SCORE]["params"])
    state = dict(state, **{FAKE_SCORE: dict(state[FAKE_SCORE], params=moved)})
    key = jax.random.key(1)

    @jax.jit
    def run(params):
        student = nnx.merge(graphdef, params)
        out = {}
        for name, r in (("none", base), ("zero", DiffusionEMD(**options, mcmc_steps=3, mcmc_step_size=0.0)),
                        ("mcmc", DiffusionEMD(**options, mcmc_steps=3, mcmc_step_size=0.05))):  # fmt: skip
            out[name] = r.loss(student, None, state, BATCH, key)[0]
        # by hand: DMD's loss at the generator's own draw
        _, z_key, time_key, noise_key, _ = jax.random.split(key, 5)
        z = jax.random.normal(z_key, (8, 2))
        t = base.loss_times(time_key, 8)
        x = base.one_step(student, None)(z)
        x_t = dmd.renoise(base.schedule, x, t, jax.random.normal(noise_key, z.shape))
        real, fake = base.scores(state, None)
        out["hand"] = dmd.distribution_matching_loss(x, real(x_t, t), fake(x_t, t))
        return out

    out = run(params)
    assert float(out["none"]) > 0
    np.testing.assert_allclose(float(out["none"]), float(out["hand"]), rtol=1e-6)
    np.testing.assert_allclose(float(out["zero"]), float(out["none"]), rtol=1e-5)
    assert abs(float(out["mcmc"]) - float(out["none"])) > 1e-4 * float(out["none"])
    # the M-step's gradient is DMD's at the refined pair held fixed (no gradient through the chain)
    mcmc = DiffusionEMD(**options, mcmc_steps=3, mcmc_step_size=0.05)

    def fixed_pair_loss(p, z, eps, t):
        x = mcmc.one_step(nnx.merge(graphdef, p), None)(z)
        x_t = jax.lax.stop_gradient(dmd.renoise(mcmc.schedule, x, t, eps))
        real, fake = mcmc.scores(state, None)
        return dmd.distribution_matching_loss(x, real(x_t, t), fake(x_t, t))

    @jax.jit
    def grads(params):
        _, z_key, time_key, noise_key, mcmc_key = jax.random.split(key, 5)
        z = jax.random.normal(z_key, (8, 2))
        t = mcmc.loss_times(time_key, 8)
        eps = jax.random.normal(noise_key, z.shape)
        z, eps = mcmc.refine(nnx.merge(graphdef, params), state, z, eps, t, None, mcmc_key)
        got = jax.grad(lambda p: mcmc.loss(nnx.merge(graphdef, p), None, state, BATCH, key)[0])(params)
        return got, jax.grad(fixed_pair_loss)(params, z, eps, t)

    got, want = grads(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(got)) > 0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_bad_emd_options():
    with pytest.raises(ValueError, match="one-step generator without regression"):
        DiffusionEMD(variant="dmd")
    with pytest.raises(ValueError, match="mcmc_steps"):
        DiffusionEMD(mcmc_steps=-1)

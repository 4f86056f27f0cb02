import jax
import jax.numpy as jnp
import numpy as np

from jdistill.diffusion.methods import guidance

RNG = np.random.default_rng(6)


def test_guided_target_and_its_limits():
    cond, uncond = RNG.normal(size=(3, 2, 2)), RNG.normal(size=(3, 2, 2))
    w = np.array([0.0, 1.0, 2.5])
    expected = (1 + w[:, None, None]) * cond - w[:, None, None] * uncond
    np.testing.assert_allclose(guidance.guided_target(cond, uncond, w), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guidance.guided_target(cond, uncond, 0.0), cond, rtol=1e-6)
    np.testing.assert_allclose(guidance.guided_target(cond, uncond, -1.0), uncond, rtol=1e-6, atol=1e-6)


def test_loss_regresses_the_fixed_guided_target():
    student, cond, uncond = (jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32) for _ in range(3))
    w = jnp.asarray([0.5, 1.0, 3.0])
    target = (1 + np.asarray(w)[:, None]) * np.asarray(cond) - np.asarray(w)[:, None] * np.asarray(uncond)
    loss = guidance.guidance_distillation_loss(student, cond, uncond, w)
    np.testing.assert_allclose(loss, np.mean((np.asarray(student) - target) ** 2), rtol=1e-5)
    assert float(guidance.guidance_distillation_loss(cond, cond, uncond, 0.0)) == 0.0
    grads = jax.grad(lambda c, u: guidance.guidance_distillation_loss(student, c, u, w), argnums=(0, 1))(cond, uncond)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_strength_sampling_and_plug_and_play():
    w = guidance.sample_guidance_strength(jax.random.key(0), 4096, 0.5, 4.0)
    assert float(w.min()) >= 0.5 and float(w.max()) <= 4.0 and abs(float(w.mean()) - 2.25) < 0.1
    base, guide = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    w = np.array([0.0, 2.0])
    np.testing.assert_allclose(guidance.plug_and_play_output(base, guide, w), base + w[:, None] * guide, rtol=1e-6)
    # A guide equal to x_c - x_u reproduces classifier-free guidance exactly.
    uncond = RNG.normal(size=(2, 3))
    np.testing.assert_allclose(
        guidance.plug_and_play_output(base, base - uncond, w), guidance.guided_target(base, uncond, w), rtol=1e-5
    )

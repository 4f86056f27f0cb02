import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods import progressive as pd
from tests.diffusion.methods.paths import FAMILIES, RANGES, np_alpha_sigma, np_ddim

RNG = np.random.default_rng(0)


def _times(family, batch=5):
    high, low = RANGES[family]
    t = RNG.uniform(low + 0.3 * (high - low), high, batch)
    s = t - RNG.uniform(0.05, 0.25, batch) * (high - low)
    return t, np.maximum(s, low + 1e-3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_target_matches_the_closed_form_and_one_step_lands_on_the_teacher(family):
    t, s = _times(family)
    x_t, x_s = RNG.normal(size=(5, 3, 2)), RNG.normal(size=(5, 3, 2))
    a_t, s_t = (v[:, None, None] for v in np_alpha_sigma(family, t))
    a_s, s_s = (v[:, None, None] for v in np_alpha_sigma(family, s))
    expected = (x_s - s_s / s_t * x_t) / (a_s - s_s / s_t * a_t)
    target = pd.progressive_target(x_t, x_s, a_t, s_t, a_s, s_s)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np_ddim(x_t, np.asarray(target, np.float64), a_t, s_t, a_s, s_s), x_s, rtol=1e-3, atol=1e-3
    )


def test_target_at_the_clean_end_is_the_teachers_sample():
    x_t, x_s = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    target = pd.progressive_target(x_t, x_s, 0.2, 0.9, 1.0, 0.0)
    np.testing.assert_allclose(target, x_s, rtol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_teacher_two_steps_are_two_ddim_steps(family):
    high, low = RANGES[family]
    t, m, s = (np.full(4, v) for v in (low + 0.8 * (high - low), low + 0.5 * (high - low), low + 0.2 * (high - low)))
    x = RNG.normal(size=(4, 3))
    weight = RNG.normal(size=(3, 3))
    teacher = lambda x, t: jnp.tanh(x @ weight) * (1 + t[:, None])
    out = pd.teacher_two_steps(teacher, x, (t, m, s), FAMILIES[family])
    expected = x
    for a, b in ((t, m), (m, s)):
        (a_a, s_a), (a_b, s_b) = np_alpha_sigma(family, a), np_alpha_sigma(family, b)
        x0 = np.tanh(expected @ weight) * (1 + a[:, None])
        expected = np_ddim(expected, x0, a_a[:, None], s_a[:, None], a_b[:, None], s_b[:, None])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_student_equal_to_an_exact_teacher_has_zero_loss(family):
    # Point-mass data: the teacher's x0 is exact, DDIM is exact, two teacher steps equal one; the student that
    # predicts the same x0 is already the distilled model.
    point = jnp.asarray(RNG.normal(size=(1, 3)))
    teacher = lambda x, t: jnp.broadcast_to(point, x.shape)
    t, s = _times(family)
    m = 0.5 * (t + s)
    x_t = jnp.asarray(RNG.normal(size=(5, 3)))
    x_s = pd.teacher_two_steps(teacher, x_t, (t, m, s), FAMILIES[family])
    loss = pd.progressive_distillation_loss(teacher(x_t, t), x_s, x_t, (t, s), FAMILIES[family])
    assert float(loss) < 1e-9
    assert float(pd.progressive_distillation_loss(teacher(x_t, t) + 0.1, x_s, x_t, (t, s), FAMILIES[family])) > 1e-3


def test_loss_is_the_weighted_mean_squared_error_to_the_target():
    t, s = np.array([0.9, 0.5]), np.array([0.6, 0.2])
    x_t, x_s, student = (RNG.normal(size=(2, 4)) for _ in range(3))
    a_t, s_t = np_alpha_sigma("flow", t)
    a_s, s_s = np_alpha_sigma("flow", s)
    target = (x_s - (s_s / s_t)[:, None] * x_t) / (a_s - s_s / s_t * a_t)[:, None]
    weights = np.maximum(a_t**2 / s_t**2, 1.0)
    expected = np.mean(weights * np.mean((student - target) ** 2, axis=-1))
    got = pd.progressive_distillation_loss(student, x_s, x_t, (t, s), FAMILIES["flow"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    snr = a_t**2 / s_t**2
    np.testing.assert_allclose(pd.progressive_weights(a_t, s_t, "snr_plus_one"), snr + 1, rtol=1e-6)
    np.testing.assert_allclose(pd.progressive_weights(a_t, s_t, "none"), 1.0)


def test_loss_holds_the_target_fixed():
    t, s = np.array([0.9, 0.5]), np.array([0.6, 0.2])
    x_t, x_s, student = (jnp.asarray(RNG.normal(size=(2, 4))) for _ in range(3))
    grad = jax.grad(lambda x_s: pd.progressive_distillation_loss(student, x_s, x_t, (t, s), FAMILIES["flow"]))(x_s)
    assert float(jnp.abs(grad).max()) == 0.0


def test_rounds_halve_the_step_count():
    assert pd.round_step_counts(64) == [32, 16, 8, 4, 2, 1]
    assert pd.round_step_counts(8, 2) == [4, 2]
    for bad in ((6, 1), (8, 8), (8, 3), (1, 1)):
        with pytest.raises(ValueError):
            pd.round_step_counts(*bad)


def test_student_steps_cover_pairs_of_teacher_steps():
    grid = jnp.linspace(1.0, 0.0, 9)
    t, m, s = pd.sample_student_step(jax.random.key(0), grid, 512)
    np.testing.assert_allclose(t - m, 0.125, atol=1e-6)
    np.testing.assert_allclose(m - s, 0.125, atol=1e-6)
    assert set(np.round(np.asarray(t), 4)) == {1.0, 0.75, 0.5, 0.25}

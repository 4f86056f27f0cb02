"""Tests for jdistill.losses.ssl: DINO objective and schedules, EMA, random-teacher interpolation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses.ssl import (
    dino_center_update,
    dino_loss,
    dino_pair_count,
    dino_teacher_temperature,
    ema_momentum,
    ema_update,
    random_teacher_interpolation,
    random_teacher_loss,
)

# --- float64 numpy references ---------------------------------------------------------------------


def np_log_softmax(x, temperature=1.0):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_dino_loss(student, teacher, center, tau_s, tau_t):
    """The official PyTorch loop, transcribed: per-pair batch-mean CE, summed, divided by the pair count."""
    teacher_probs = np.exp(np_log_softmax(np.asarray(teacher, np.float64) - center, tau_t))
    student_log_probs = np_log_softmax(student, tau_s)
    total, pairs = 0.0, 0
    for i, q in enumerate(teacher_probs):
        for j, log_p in enumerate(student_log_probs):
            if i == j:
                continue
            total += np.mean(np.sum(-q * log_p, axis=-1))
            pairs += 1
    return total / pairs


N_CROPS, N_GLOBAL, BATCH, DIM = 6, 2, 3, 8


def random_outputs(seed, n_crops=N_CROPS, n_global=N_GLOBAL, batch=BATCH, dim=DIM):
    rng = np.random.default_rng(seed)
    student = (2.0 * rng.normal(size=(n_crops, batch, dim))).astype(np.float32)
    teacher = (2.0 * rng.normal(size=(n_global, batch, dim))).astype(np.float32)
    center = (0.5 * rng.normal(size=(dim,))).astype(np.float32)
    return student, teacher, center


# --- DINO loss --------------------------------------------------------------------------------------


# Jitted with traced temperatures: one compilation per crop layout keeps the tests fast.
jitted_dino_loss = jax.jit(dino_loss, static_argnames="n_global_crops")


@pytest.mark.parametrize("n_crops, n_global", [(2, 2), (6, 2), (5, 1), (4, 3)])
def test_dino_loss_matches_official_loop(n_crops, n_global):
    student, teacher, center = random_outputs(seed=n_crops, n_crops=n_crops, n_global=n_global)
    for tau_s, tau_t in [(0.1, 0.04), (0.1, 0.07), (1.0, 1.0)]:
        got = jitted_dino_loss(
            student, teacher, center, student_temperature=tau_s, teacher_temperature=tau_t, n_global_crops=n_global
        )
        np.testing.assert_allclose(got, np_dino_loss(student, teacher, center, tau_s, tau_t), rtol=2e-5)


def test_dino_loss_is_teacher_entropy_when_every_view_agrees():
    # Identical views, equal temperatures and no centre: each pair's CE is the teacher's entropy.
    rng = np.random.default_rng(1)
    view = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    student, teacher = np.stack([view] * N_CROPS), np.stack([view] * N_GLOBAL)
    log_p = np_log_softmax(view, 0.5)
    entropy = np.mean(-np.sum(np.exp(log_p) * log_p, axis=-1))
    center = np.zeros(DIM, np.float32)
    got = jitted_dino_loss(student, teacher, center, student_temperature=0.5, teacher_temperature=0.5)
    np.testing.assert_allclose(got, entropy, rtol=1e-5)


def test_dino_loss_ignores_same_view_pairs():
    student, teacher, center = random_outputs(seed=2)
    changed = student.copy()
    changed[:N_GLOBAL] = student[:N_GLOBAL][::-1]  # swap the two global crops
    # Only pairs (0, 1) and (1, 0) among the global crops count, so a swap changes the loss ...
    swapped, original = jitted_dino_loss(changed, teacher, center), jitted_dino_loss(student, teacher, center)
    assert not np.isclose(swapped, original, rtol=1e-4)
    # ... while with a single teacher crop, student crop 0 (the same view) does not enter the loss at all.
    one_global = jitted_dino_loss(student, teacher[:1], center, n_global_crops=1)
    perturbed = student.copy()
    perturbed[0] += 5.0 * np.random.default_rng(3).normal(size=perturbed[0].shape).astype(np.float32)
    got = jitted_dino_loss(perturbed, teacher[:1], center, n_global_crops=1)
    np.testing.assert_allclose(got, one_global, rtol=1e-6)


def test_dino_loss_gives_no_gradient_to_teacher_or_centre():
    student, teacher, center = random_outputs(seed=4)
    grads = jax.grad(dino_loss, argnums=(1, 2))(student, teacher, center)
    assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_dino_loss_gradients_match_finite_differences():
    student, teacher, center = random_outputs(seed=5)
    with jax.enable_x64(True):
        loss = functools.partial(
            dino_loss,
            teacher_outputs=jnp.asarray(teacher, jnp.float64),
            center=jnp.asarray(center, jnp.float64),
            student_temperature=0.5,
        )
        check_grads(jax.jit(loss), (jnp.asarray(student, jnp.float64),), order=1, modes=("rev",))


def test_dino_loss_bf16_is_upcast_and_traced_temperatures_work():
    student, teacher, center = random_outputs(seed=6)
    expected = dino_loss(student, teacher, center, teacher_temperature=0.06)
    jitted = jax.jit(lambda s, t, c, tau: dino_loss(s, t, c, teacher_temperature=tau))
    np.testing.assert_allclose(jitted(student, teacher, center, jnp.float32(0.06)), expected, rtol=1e-6)
    got = dino_loss(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16), center)
    assert got.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_global_crops=3), "n_global_crops=3"),
        (dict(student_temperature=0.0), "temperature must be > 0"),
    ],
)
def test_dino_loss_invalid_arguments_raise(kwargs, message):
    student, teacher, center = random_outputs(seed=7)
    with pytest.raises(ValueError, match=message):
        dino_loss(student, teacher, center, **kwargs)


def test_dino_loss_rejects_mismatched_batch():
    student, teacher, center = random_outputs(seed=8)
    with pytest.raises(ValueError, match="share"):
        dino_loss(student, teacher[:, :2], center)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.sampled_from([(3, 1, 4), (4, 2, 5)]),
    values=st.sampled_from(["normal", "extreme"]),
    seed=st.integers(0, 2**16),
)
def test_dino_loss_is_finite_for_extreme_outputs(shape, values, seed):
    _, batch, dim = shape
    rng = np.random.default_rng(seed)
    scale = 1e4 if values == "extreme" else 3.0
    student = (scale * rng.normal(size=shape)).astype(np.float32)
    teacher = (scale * rng.normal(size=(2, batch, dim))).astype(np.float32)
    value, grad = _dino_value_and_grad(student, teacher, np.zeros(dim, np.float32))
    assert np.isfinite(value) and value >= -1e-5 and np.all(np.isfinite(grad))


_dino_value_and_grad = jax.jit(jax.value_and_grad(dino_loss))


# --- counts and schedules ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_crops", [2, 4, 10, 12])
def test_pair_count_is_two_times_crops_minus_one(n_crops):
    assert dino_pair_count(n_crops) == 2 * (n_crops - 1)
    assert dino_pair_count(n_crops, n_global=1) == n_crops - 1


def test_pair_count_rejects_more_global_than_total_crops():
    with pytest.raises(ValueError, match="n_global"):
        dino_pair_count(2, n_global=3)


def test_ema_momentum_schedule_runs_from_base_to_one_monotonically():
    total = 1000
    steps = np.arange(total + 1)
    values = np.asarray(jax.vmap(lambda s: ema_momentum(s, total))(steps))
    np.testing.assert_allclose(values[0], 0.996, rtol=1e-7)
    np.testing.assert_allclose(values[-1], 1.0, rtol=1e-7)
    assert np.all(np.diff(values) >= 0)
    expected = 1 - 0.5 * (1 - 0.996) * (1 + np.cos(np.pi * steps / total))
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert float(ema_momentum(2 * total, total)) == 1.0


def test_teacher_temperature_warms_up_linearly_then_stays_constant():
    epochs = np.arange(40)
    got = np.asarray([dino_teacher_temperature(e) for e in epochs])
    official = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(10, 0.07)])
    np.testing.assert_allclose(got, official, rtol=1e-6)
    assert np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(jax.jit(dino_teacher_temperature)(jnp.int32(12)), official[12], rtol=1e-6)
    assert float(dino_teacher_temperature(0, warmup_epochs=0)) == pytest.approx(0.07)


# --- centre and EMA -------------------------------------------------------------------------------


def test_center_update_matches_formula():
    _, teacher, center = random_outputs(seed=9)
    expected = 0.9 * center + 0.1 * teacher.astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(dino_center_update(center, teacher), expected, rtol=1e-6)
    np.testing.assert_allclose(dino_center_update(center, teacher, momentum=0.0), teacher.mean(axis=(0, 1)), rtol=1e-6)


def test_center_update_all_reduces_over_the_named_axis():
    # Two "devices" with equal shards: the pmean of local means is the global mean.
    _, teacher, center = random_outputs(seed=10, batch=4)
    shards = np.stack([teacher[:, :2], teacher[:, 2:]])
    per_device = jax.vmap(lambda t: dino_center_update(center, t, axis_name="data"), axis_name="data")(shards)
    np.testing.assert_allclose(per_device[0], dino_center_update(center, teacher), rtol=1e-6)
    np.testing.assert_allclose(per_device[1], per_device[0], rtol=0)


def test_ema_update_matches_formula_and_keeps_dtypes():
    rng = np.random.default_rng(11)
    teacher = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": jnp.asarray(rng.normal(size=2), jnp.bfloat16)}
    student = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": jnp.asarray(rng.normal(size=2), jnp.bfloat16)}
    new = ema_update(teacher, student, 0.99)
    np.testing.assert_allclose(new["w"], 0.99 * teacher["w"] + 0.01 * student["w"], rtol=1e-6)
    assert new["b"].dtype == jnp.bfloat16
    assert jax.tree.map(np.shape, new) == jax.tree.map(np.shape, teacher)
    np.testing.assert_array_equal(ema_update(teacher, student, 1.0)["w"], teacher["w"])


# --- random teachers ----------------------------------------------------------------------------------


def test_interpolation_at_zero_is_the_teacher_and_at_one_the_random_params():
    rng = np.random.default_rng(12)
    teacher = {"a": rng.normal(size=(4,)).astype(np.float32), "b": [rng.normal(size=(2, 2)).astype(np.float32)]}
    random = jax.tree.map(lambda x: x + 1.0, teacher)
    np.testing.assert_array_equal(random_teacher_interpolation(teacher, random, 0.0)["a"], teacher["a"])
    np.testing.assert_array_equal(random_teacher_interpolation(teacher, random, 0.0)["b"][0], teacher["b"][0])
    np.testing.assert_allclose(random_teacher_interpolation(teacher, random, 1.0)["a"], random["a"], rtol=1e-6)


@pytest.mark.parametrize("a", [0.25, 0.5, 0.8])
def test_interpolation_preserves_variance_of_iid_unit_params(a):
    n = 400_000
    rng = np.random.default_rng(13)
    teacher, random = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    mixed = np.asarray(random_teacher_interpolation(teacher, random, a), np.float64)
    # The sample variance of n unit Gaussians has standard deviation sqrt(2 / n) ~ 0.0022; allow ~4.5 sigma.
    assert abs(mixed.var() - 1.0) < 0.01
    np.testing.assert_allclose(mixed, ((1 - a) * teacher + a * random) / np.sqrt(2 * a * a - 2 * a + 1), rtol=1e-5)


def test_random_teacher_loss_is_zero_at_copy_and_matches_kl():
    student, teacher, _ = random_outputs(seed=14)
    assert abs(float(random_teacher_loss(teacher, teacher))) < 1e-6
    log_ps, log_pt = np_log_softmax(student[:2]), np_log_softmax(teacher)
    expected = np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1))
    np.testing.assert_allclose(random_teacher_loss(student[:2], teacher), expected, rtol=1e-5)
    grad_teacher = jax.grad(random_teacher_loss, argnums=1)(student[:2], teacher)
    assert np.all(np.asarray(grad_teacher) == 0.0)

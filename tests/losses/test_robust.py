"""Tests for jdistill.losses.robust: ADR labels and schedules, DCS, SLA + SD, pseudo-label filtering."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses.robust import (
    ADR_EMA_DECAY,
    ADR_LAM,
    ADR_TEMPERATURE,
    adr_labels,
    cosine_schedule,
    dcs_disagreement,
    dcs_loss,
    dcs_update_weights,
    filter_pseudo_labels,
    sla_aggregate,
    sla_joint_labels,
    sla_self_distillation_loss,
    soft_cross_entropy,
)
from jdistill.losses.ssl import ema_momentum

# --- float64 numpy references ---------------------------------------------------------------------


def np_log_softmax(x, temperature=1.0):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_ce(logits, labels):
    return -np.take_along_axis(np_log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def np_kl(log_p, log_q):
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def np_adr_labels(ema_logits, labels, temperature, lam):
    probs = np.exp(np_log_softmax(ema_logits, temperature))
    onehot = np.eye(probs.shape[-1])[labels]
    lam_i = np.clip(lam - (probs.max(-1) - probs[np.arange(len(labels)), labels]), 0, 1)[:, None]
    return lam_i * probs + (1 - lam_i) * onehot


def np_sla_aggregate(joint, n_classes, n_transforms):
    return sum(joint[j][:, j::n_transforms] for j in range(n_transforms)) / n_transforms


BATCH, CLASSES = 8, 5


def random_case(seed, batch=BATCH, classes=CLASSES, scale=2.0):
    rng = np.random.default_rng(seed)
    student = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
    teacher = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
    return student, teacher, rng.integers(0, classes, size=batch)


# --- ADR --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, lam", [(2.5, 0.7), (2.0, 0.95), (1.0, 0.3)])
def test_adr_labels_match_numpy(temperature, lam):
    _, teacher, labels = random_case(seed=1)
    got = adr_labels(teacher, labels, temperature=temperature, lam=lam)
    np.testing.assert_allclose(got, np_adr_labels(teacher, labels, temperature, lam), rtol=1e-5, atol=1e-7)


def test_adr_labels_use_lam_itself_when_teacher_predicts_the_label():
    _, teacher, _ = random_case(seed=2)
    labels = teacher.argmax(-1)
    probs = np.exp(np_log_softmax(teacher, 2.0))
    got = np.asarray(adr_labels(teacher, labels, temperature=2.0, lam=0.7))
    np.testing.assert_allclose(got, 0.7 * probs + 0.3 * np.eye(CLASSES)[labels], rtol=1e-5, atol=1e-7)


def test_adr_labels_fall_back_to_one_hot_for_a_confident_wrong_teacher():
    teacher = np.array([[20.0, 0.0, 0.0]], np.float32)
    got = adr_labels(teacher, np.array([1]), temperature=1.0, lam=0.7)
    np.testing.assert_allclose(got, [[0.0, 1.0, 0.0]], atol=1e-6)


def test_adr_labels_sum_to_one_and_carry_no_gradient():
    _, teacher, labels = random_case(seed=3, scale=10.0)
    got = adr_labels(teacher, labels, temperature=2.0, lam=0.95)
    np.testing.assert_allclose(np.sum(got, axis=-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(got) >= 0)
    grad = jax.grad(lambda t: jnp.sum(adr_labels(t, labels, temperature=2.0, lam=0.7) ** 2))(teacher)
    assert np.all(np.asarray(grad) == 0.0)


def test_cosine_schedule_endpoints_and_adr_defaults():
    assert ADR_TEMPERATURE == (2.5, 2.0) and ADR_LAM == (0.7, 0.95) and ADR_EMA_DECAY == 0.995
    steps = np.arange(101)
    values = np.asarray(jax.vmap(lambda s: cosine_schedule(s, 100, *ADR_TEMPERATURE))(steps))
    np.testing.assert_allclose([values[0], values[50], values[-1]], [2.5, 2.25, 2.0], rtol=1e-6)
    assert np.all(np.diff(values) <= 0)
    assert float(cosine_schedule(500, 100, *ADR_LAM)) == pytest.approx(0.95)
    # DINO's EMA-momentum schedule is the same cosine from `base` to 1.
    np.testing.assert_allclose(cosine_schedule(steps, 100, 0.996, 1.0), ema_momentum(steps, 100), rtol=1e-7)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    student, _, labels = random_case(seed=4)
    got = soft_cross_entropy(student, np.eye(CLASSES)[labels])
    np.testing.assert_allclose(got, np_ce(student, labels).mean(), rtol=1e-5)


# --- DCS --------------------------------------------------------------------------------------------


def test_dcs_weights_match_formula_and_have_mean_one():
    rng = np.random.default_rng(5)
    weights, disagreement = rng.uniform(0.5, 2.0, BATCH), rng.random(BATCH)
    raw = weights * np.exp(0.3 * disagreement)
    got = dcs_update_weights(weights, disagreement, 0.3)
    np.testing.assert_allclose(got, raw / raw.mean(), rtol=1e-5)


@pytest.mark.parametrize("constant", [0.0, 1.0, 3.7])
def test_dcs_constant_agreement_keeps_weights_uniform(constant):
    weights = np.ones(BATCH)
    for _ in range(5):
        weights = dcs_update_weights(weights, np.full(BATCH, constant), 2.0)
    np.testing.assert_allclose(weights, 1.0, rtol=1e-6)


def test_dcs_large_step_does_not_overflow():
    got = np.asarray(dcs_update_weights(np.ones(4), np.array([0.0, 1.0, 0.0, 1.0]), 1e4))
    np.testing.assert_allclose(got, [0.0, 2.0, 0.0, 2.0], atol=1e-6)


def test_dcs_disagreement_indicator_and_kl():
    student, teacher, _ = random_case(seed=6)
    np.testing.assert_array_equal(dcs_disagreement(student, teacher), student.argmax(-1) != teacher.argmax(-1))
    expected_kl = np_kl(np_log_softmax(teacher), np_log_softmax(student))
    np.testing.assert_allclose(dcs_disagreement(student, teacher, kind="kl"), expected_kl, rtol=1e-5)
    with pytest.raises(ValueError, match="kind must be"):
        dcs_disagreement(student, teacher, kind="l2")


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dcs_loss_matches_numpy(temperature):
    student, teacher, labels = random_case(seed=7)
    weights = np.random.default_rng(7).uniform(0.1, 3.0, BATCH)
    kl = np_kl(np_log_softmax(teacher, temperature), np_log_softmax(student, temperature))
    per_sample = 0.6 * np_ce(student, labels) + 0.4 * temperature**2 * kl
    expected = np.sum(weights / weights.mean() * per_sample) / BATCH
    got = dcs_loss(student, teacher, labels, weights, distill_weight=0.4, temperature=temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_dcs_loss_gradients_match_finite_differences():
    student, teacher, labels = random_case(seed=8)
    weights = np.random.default_rng(8).uniform(0.1, 3.0, BATCH)
    with jax.enable_x64(True):
        loss = jax.jit(functools.partial(dcs_loss, labels=labels, weights=jnp.asarray(weights), temperature=2.0))
        check_grads(
            loss, (jnp.asarray(student, jnp.float64), jnp.asarray(teacher, jnp.float64)), order=1, modes=("rev",)
        )


# --- SLA + SD ---------------------------------------------------------------------------------------


def test_sla_joint_labels():
    np.testing.assert_array_equal(sla_joint_labels(np.array([0, 2, 3]), 1, 4), [1, 9, 13])
    np.testing.assert_array_equal(sla_joint_labels(np.array([3]), np.arange(4)[:, None], 4)[:, 0], [12, 13, 14, 15])


@pytest.mark.parametrize("n_transforms", [1, 2, 4])
def test_sla_aggregate_matches_official_indexing(n_transforms):
    joint = np.random.default_rng(9).normal(size=(n_transforms, BATCH, CLASSES * n_transforms)).astype(np.float32)
    got = sla_aggregate(joint, CLASSES, n_transforms)
    assert got.shape == (BATCH, CLASSES)
    np.testing.assert_allclose(got, np_sla_aggregate(joint, CLASSES, n_transforms), rtol=1e-6)
    if n_transforms == 1:
        np.testing.assert_array_equal(got, joint[0])


def test_sla_aggregate_rejects_wrong_width():
    with pytest.raises(ValueError, match="n_classes \\* n_transforms"):
        sla_aggregate(np.zeros((4, BATCH, CLASSES * 3)), CLASSES, 4)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_sla_self_distillation_loss_matches_numpy(temperature):
    rng = np.random.default_rng(10)
    n_transforms = 4
    joint = (2 * rng.normal(size=(n_transforms, BATCH, CLASSES * n_transforms))).astype(np.float32)
    single, _, labels = random_case(seed=10)
    joint_labels = labels[None, :] * n_transforms + np.arange(n_transforms)[:, None]
    aggregated = np_sla_aggregate(joint, CLASSES, n_transforms)
    kl = np_kl(np_log_softmax(aggregated, temperature), np_log_softmax(single, temperature))
    expected = np_ce(joint, joint_labels).mean() + np_ce(single, labels).mean() + temperature**2 * kl.mean()
    got = sla_self_distillation_loss(joint, single, labels, temperature=temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sla_distillation_term_gives_joint_head_no_gradient():
    rng = np.random.default_rng(11)
    joint = rng.normal(size=(2, BATCH, CLASSES * 2)).astype(np.float32)
    single, _, labels = random_case(seed=11)
    grad_full = jax.jit(jax.grad(sla_self_distillation_loss))(joint, single, labels, temperature=2.0)
    joint_labels = labels[None, :] * 2 + np.arange(2)[:, None]

    def joint_ce(z):
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(z), joint_labels[..., None], axis=-1))

    grad_joint_ce = jax.jit(jax.grad(joint_ce))(joint)
    np.testing.assert_allclose(grad_full, grad_joint_ce, rtol=1e-5, atol=1e-8)


# --- pseudo-label filtering -----------------------------------------------------------------------------


def test_filter_pseudo_labels_by_confidence():
    _, teacher, _ = random_case(seed=12)
    labels, keep = filter_pseudo_labels(teacher, threshold=0.6)
    probs = np.exp(np_log_softmax(teacher))
    np.testing.assert_array_equal(labels, probs.argmax(-1))
    np.testing.assert_array_equal(keep, probs.max(-1) >= 0.6)
    assert np.all(filter_pseudo_labels(teacher, threshold=0.0)[1])


def test_filter_pseudo_labels_by_proxy_agreement():
    student, teacher, _ = random_case(seed=13)
    labels, keep = filter_pseudo_labels(teacher, threshold=0.5, proxy_logits=student)
    proxy_probs = np.exp(np_log_softmax(student))
    np.testing.assert_array_equal(keep, proxy_probs[np.arange(BATCH), teacher.argmax(-1)] >= 0.5)
    assert np.all(student.argmax(-1)[np.asarray(keep)] == np.asarray(labels)[np.asarray(keep)])
    _, keep_self = filter_pseudo_labels(teacher, threshold=0.5, proxy_logits=teacher)
    np.testing.assert_array_equal(keep_self, filter_pseudo_labels(teacher, threshold=0.5)[1])


# --- hypothesis: every sample-level function stays finite on random shapes and extreme logits -------


@functools.partial(jax.jit, static_argnames="n_transforms")
def all_robust_values(student, teacher, labels, weights, n_transforms):
    joint = jnp.tile(teacher, (n_transforms, 1, n_transforms)).reshape(n_transforms, *teacher.shape[:-1], -1)
    return {
        "adr": adr_labels(teacher, labels, temperature=2.0, lam=0.7),
        "dcs_weights": dcs_update_weights(weights, dcs_disagreement(student, teacher, kind="kl"), 0.5),
        "dcs_loss": jax.value_and_grad(dcs_loss)(student, teacher, labels, weights, temperature=2.0),
        "sla": jax.value_and_grad(sla_self_distillation_loss, argnums=(0, 1))(joint, student, labels),
        "soft_ce": soft_cross_entropy(student, adr_labels(teacher, labels, temperature=2.0, lam=0.7)),
    }


@settings(max_examples=20, deadline=None)
@given(
    shape=st.sampled_from([(1, 2), (3, 5)]),
    scale=st.sampled_from([1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_robust_objectives_are_finite_for_random_shapes_and_extreme_logits(shape, scale, seed):
    rng = np.random.default_rng(seed)
    student = (scale * rng.normal(size=shape)).astype(np.float32)
    teacher = (scale * rng.normal(size=shape)).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[0])
    weights = rng.uniform(0.1, 2.0, size=shape[0]).astype(np.float32)
    values = all_robust_values(student, teacher, labels, weights, n_transforms=2)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(values))
    np.testing.assert_allclose(np.sum(values["adr"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.mean(values["dcs_weights"]), 1.0, rtol=1e-5)

"""Tests for jdistill.losses.features: hint losses, attention transfer, multi-exit self-distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses.features import (
    attention_map,
    attention_transfer,
    hierarchical_multi_exit_loss,
    hint_cosine,
    hint_mse,
    multi_exit_weights,
)

# --- float64 numpy references ---------------------------------------------------------------------


def np_log_softmax(x, temperature=1.0):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_kd_ce(student, teacher, labels, temperature, distill_weight, label_weight):
    log_ps, log_pt = np_log_softmax(student, temperature), np_log_softmax(teacher, temperature)
    kl = np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=-1)
    ce = -np.take_along_axis(np_log_softmax(student), labels[..., None], axis=-1)[..., 0]
    return distill_weight * temperature**2 * kl + label_weight * ce


def np_masked_mean(per_position, mask):
    valid = np.ones(per_position.shape, bool) if mask is None else mask
    return per_position[valid].sum() / max(valid.sum(), 1)


def np_attention_map(maps, p):
    attention = np.mean(np.abs(np.asarray(maps, np.float64)) ** p, axis=-1).reshape(len(maps), -1)
    return attention / np.linalg.norm(attention, axis=-1, keepdims=True)


BATCH, SEQ, D_S, D_T, VOCAB = 3, 4, 6, 5, 7


def random_features(seed, d_s=D_S, d_t=D_T):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(BATCH, SEQ, d_s)).astype(np.float32)
    teacher = rng.normal(size=(BATCH, SEQ, d_t)).astype(np.float32)
    projection = (rng.normal(size=(d_s, d_t)) / np.sqrt(d_s)).astype(np.float32)
    mask = rng.random((BATCH, SEQ)) < 0.7
    return student, teacher, projection, mask


# --- hint losses --------------------------------------------------------------------------------------


def test_hint_mse_matches_numpy_with_projection_and_mask():
    student, teacher, projection, mask = random_features(seed=1)
    per_position = np.mean((student.astype(np.float64) @ projection - teacher) ** 2, axis=-1)
    got = hint_mse(student, teacher, projection=projection, mask=mask)
    np.testing.assert_allclose(got, np_masked_mean(per_position, mask), rtol=1e-5)
    assert hint_mse(student, teacher, projection=projection, reduction="none").shape == (BATCH, SEQ)


def test_hint_cosine_matches_numpy_with_projection_and_mask():
    student, teacher, projection, mask = random_features(seed=2)
    projected = student.astype(np.float64) @ projection
    cosine = np.sum(projected * teacher, -1) / (np.linalg.norm(projected, axis=-1) * np.linalg.norm(teacher, axis=-1))
    got = hint_cosine(student, teacher, projection=projection, mask=mask)
    np.testing.assert_allclose(got, np_masked_mean(1.0 - cosine, mask), rtol=1e-5)


def test_hint_losses_are_zero_for_equal_features():
    _, teacher, _, mask = random_features(seed=3)
    assert float(hint_mse(teacher, teacher, mask=mask)) == 0.0
    assert abs(float(hint_cosine(teacher, teacher, mask=mask))) < 1e-6
    assert abs(float(hint_cosine(3.0 * teacher, teacher))) < 1e-6  # cosine ignores scale
    np.testing.assert_allclose(hint_cosine(-teacher, teacher), 2.0, rtol=1e-6)


def test_hint_projection_shape_is_checked():
    student, teacher, projection, _ = random_features(seed=4)
    with pytest.raises(ValueError, match="pass projection"):
        hint_mse(student, teacher)
    with pytest.raises(ValueError, match=r"projection must have shape \[d_s, d_t\] = \[6, 5\]"):
        hint_cosine(student, teacher, projection=projection.T)


@pytest.mark.parametrize("loss", [hint_mse, hint_cosine])
def test_hint_gradients_match_finite_differences(loss):
    student, teacher, projection, mask = random_features(seed=5)
    with jax.enable_x64(True):
        fn = jax.jit(lambda s, t, w: loss(s, t, projection=w, mask=mask))
        args = tuple(jnp.asarray(x, jnp.float64) for x in (student, teacher, projection))
        check_grads(fn, args, order=1, modes=("rev",))


def test_hint_cosine_gradient_is_finite_at_zero_features():
    student, teacher, _, _ = random_features(seed=6, d_s=D_T)
    student[0] = 0.0
    value, grad = jax.jit(jax.value_and_grad(hint_cosine))(student, teacher)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_hint_sum_count_and_bf16():
    student, teacher, projection, mask = random_features(seed=7)
    total, count = hint_mse(student, teacher, projection=projection, mask=mask, reduction="sum_count")
    np.testing.assert_allclose(total / count, hint_mse(student, teacher, projection=projection, mask=mask), rtol=1e-6)
    got = hint_mse(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16), projection=projection)
    assert got.dtype == jnp.float32


# --- attention transfer -------------------------------------------------------------------------------


def random_maps(seed, channels_s=3, channels_t=5, spatial=(4, 4)):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(2, *spatial, channels_s)).astype(np.float32),
        rng.normal(size=(2, *spatial, channels_t)).astype(np.float32),
    )


@pytest.mark.parametrize("p", [1, 2, 4])
def test_attention_transfer_matches_numpy(p):
    student, teacher = random_maps(seed=8)
    expected = np.mean((np_attention_map(student, p) - np_attention_map(teacher, p)) ** 2)
    np.testing.assert_allclose(attention_transfer(student, teacher, p=p), expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(attention_map(student, p=p), axis=-1), 1.0, rtol=1e-6)


def test_attention_transfer_channel_axis_and_zero_when_equal():
    student, teacher = random_maps(seed=9)
    channels_first = np.moveaxis(student, -1, 1), np.moveaxis(teacher, -1, 1)
    expected = attention_transfer(student, teacher)
    np.testing.assert_allclose(attention_transfer(*channels_first, channel_axis=1), expected, rtol=1e-6)
    assert float(attention_transfer(student, 2.0 * student)) < 1e-12  # the maps are normalised


def test_attention_transfer_rejects_mismatched_spatial_shapes():
    student, _ = random_maps(seed=10)
    _, teacher = random_maps(seed=10, spatial=(2, 8))
    with pytest.raises(ValueError, match="share \\[batch, \\*spatial\\]"):
        attention_transfer(student, teacher)


def test_attention_transfer_gradients_match_finite_differences():
    student, teacher = random_maps(seed=11)
    with jax.enable_x64(True):
        check_grads(
            jax.jit(attention_transfer),
            (jnp.asarray(student, jnp.float64), jnp.asarray(teacher, jnp.float64)),
            order=1,
            modes=("rev",),
        )


# --- multi-exit self-distillation -------------------------------------------------------------------------


def test_multi_exit_weights():
    np.testing.assert_allclose(multi_exit_weights(4), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(multi_exit_weights(4, scheme="uniform"), [0.25] * 4, rtol=1e-6)
    with pytest.raises(ValueError, match="scheme must be"):
        multi_exit_weights(3, scheme="exponential")
    with pytest.raises(ValueError, match="num_exits"):
        multi_exit_weights(0)


def random_exits(seed, num_exits=3):
    rng = np.random.default_rng(seed)
    exits = [(2 * rng.normal(size=(BATCH, SEQ, VOCAB))).astype(np.float32) for _ in range(num_exits)]
    return exits, rng.integers(0, VOCAB, size=(BATCH, SEQ)), rng.random((BATCH, SEQ)) < 0.7


@pytest.mark.parametrize("teacher", ["next", "final"])
def test_multi_exit_loss_matches_numpy(teacher):
    exits, labels, mask = random_exits(seed=12)
    weights = np.array([0.2, 0.3, 0.5])
    per_position = sum(
        weights[k] * np_kd_ce(exits[k], exits[k + 1 if teacher == "next" else -1], labels, 2.0, 0.6, 0.4)
        for k in range(2)
    )
    ce_final = -np.take_along_axis(np_log_softmax(exits[-1]), labels[..., None], axis=-1)[..., 0]
    per_position = per_position + weights[-1] * 0.4 * ce_final
    got = hierarchical_multi_exit_loss(
        exits,
        labels,
        temperature=2.0,
        weights=weights,
        distill_weight=0.6,
        label_weight=0.4,
        teacher=teacher,
        mask=mask,
    )
    np.testing.assert_allclose(got, np_masked_mean(per_position, mask), rtol=1e-5)


def test_multi_exit_loss_stops_gradient_into_teacher_exits():
    exits, labels, _ = random_exits(seed=13)
    loss = jax.jit(lambda *z: hierarchical_multi_exit_loss(list(z), labels, temperature=2.0))
    grads = jax.grad(loss, argnums=(0, 1, 2))(*exits)
    # The final exit only receives its own label term: weight 3/6 times the CE gradient.
    own_ce = jax.jit(jax.grad(lambda z: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(z), labels[..., None], -1))))(
        exits[-1]
    )
    np.testing.assert_allclose(grads[-1], 0.5 * own_ce, rtol=1e-5, atol=1e-8)
    # Without labels the final exit receives nothing at all.
    no_label_loss = jax.jit(lambda *z: hierarchical_multi_exit_loss(list(z), None, label_weight=0))
    no_label = jax.grad(no_label_loss, argnums=2)(*exits)
    assert np.all(np.asarray(no_label) == 0.0)


def test_multi_exit_loss_is_zero_when_exits_agree_without_labels():
    exits, _, mask = random_exits(seed=14)
    same = [exits[0]] * 3
    assert abs(float(hierarchical_multi_exit_loss(same, None, label_weight=0, temperature=3.0, mask=mask))) < 1e-6


def test_multi_exit_loss_single_exit_is_plain_cross_entropy():
    exits, labels, _ = random_exits(seed=15, num_exits=1)
    ce = -np.take_along_axis(np_log_softmax(exits[0]), labels[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(hierarchical_multi_exit_loss(exits, labels), ce.mean(), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(teacher="previous"), "teacher must be"),
        (dict(weights=[0.5, 0.5]), "one per exit"),
        (dict(labels=None), "needs labels"),
    ],
)
def test_multi_exit_loss_invalid_arguments_raise(kwargs, message):
    exits, labels, _ = random_exits(seed=16)
    kwargs = {"labels": labels, **kwargs}
    with pytest.raises(ValueError, match=message):
        hierarchical_multi_exit_loss(exits, **kwargs)


def test_multi_exit_gradients_match_finite_differences():
    # Only the shallowest exit: the deeper ones are teachers under stop_gradient, so finite differences
    # through them measure the detached KL terms, which are by design not part of their gradient.
    exits, labels, mask = random_exits(seed=17)
    with jax.enable_x64(True):
        deeper = [jnp.asarray(z, jnp.float64) for z in exits[1:]]
        fn = jax.jit(lambda z: hierarchical_multi_exit_loss([z, *deeper], labels, temperature=1.5, mask=mask))
        check_grads(fn, (jnp.asarray(exits[0], jnp.float64),), order=1, modes=("rev",))


# --- hypothesis: random shapes and extreme inputs stay finite --------------------------------------


@jax.jit
def all_feature_values(student, teacher, projection, mask, exits, labels):
    def total(student, teacher, projection, exits):
        return (
            hint_mse(student, teacher, projection=projection, mask=mask)
            + hint_cosine(student, teacher, projection=projection, mask=mask)
            + attention_transfer(student[..., None, :], teacher[..., None, :])
            + hierarchical_multi_exit_loss(exits, labels, temperature=2.0, mask=mask)
        )

    return jax.value_and_grad(total, argnums=(0, 1, 2, 3))(student, teacher, projection, exits)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.sampled_from([(1, 1), (2, 5)]),
    scale=st.sampled_from([1.0, 1e3, 0.0]),
    seed=st.integers(0, 2**16),
)
def test_feature_objectives_are_finite_for_random_shapes_and_extreme_inputs(shape, scale, seed):
    rng = np.random.default_rng(seed)
    student = (scale * rng.normal(size=(*shape, D_S))).astype(np.float32)
    teacher = (scale * rng.normal(size=(*shape, D_T))).astype(np.float32)
    projection = rng.normal(size=(D_S, D_T)).astype(np.float32)
    exits = [(10 * scale * rng.normal(size=(*shape, VOCAB))).astype(np.float32) for _ in range(3)]
    labels, mask = rng.integers(0, VOCAB, size=shape), rng.random(shape) < 0.5
    value, grads = all_feature_values(student, teacher, projection, mask, exits, labels)
    assert np.isfinite(value) and value >= -1e-5
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))

"""Tests for jdistill.losses.selfdistill: numpy references, limiting cases, gradients, hypothesis."""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jdistill.losses import (
    best_ground_truth_weight,
    cross_entropy,
    ensemble_teacher_log_probs,
    forward_kl,
    krr_operator,
    pskd_alpha,
    pskd_initial_buffer,
    pskd_targets,
    reduce_tokens,
    self_distillation_iterates,
    self_distillation_limit,
    self_evolution_kd,
    token_difficulty,
    warn_if_unregularised,
    xi_self_distillation,
)
from tests.losses.test_logits import (
    SHAPE,
    SLACK,
    logit_pairs,
    micro_batches,
    np_kl,
    np_log_softmax,
    np_reduce,
    random_labels,
    random_logits,
    random_mask,
    temperatures,
)

VOCAB = SHAPE[-1]

# --- float64 numpy references ---------------------------------------------------------------------


def np_onehot(labels, vocab=VOCAB):
    return np.eye(vocab)[labels]


def np_soft_ce(target, log_q):
    return -np.sum(target * log_q, axis=-1)


def np_xi(s, t, labels, xi, temperature):
    tau = xi * np.exp(np_log_softmax(t, temperature)) + (1 - xi) * np_onehot(labels)
    return np_soft_ce(tau, np_log_softmax(s, temperature))


def np_prior(t, labels, temperature):
    return 0.5 * (np.exp(np_log_softmax(t, temperature)) + np_onehot(labels))


def np_difficulty(s, t, labels, temperature=1.0):
    return np_kl(np.log(np_prior(t, labels, temperature)), np_log_softmax(s, temperature))


def np_self_evolution_gammas(s, t, labels, mask, hard_fraction, gamma_max, temperature):
    difficulty = np_difficulty(s, t, labels, temperature)
    valid = np.ones(difficulty.shape, bool) if mask is None else mask != 0
    flat = np.where(valid, difficulty, -np.inf).ravel()
    hard = np.zeros(flat.size, bool)
    hard[np.argsort(-flat, kind="stable")[: math.ceil(hard_fraction * valid.sum())]] = True
    hard = hard.reshape(difficulty.shape) & valid
    return np.where(hard, gamma_max * difficulty / difficulty[valid].max(), 0.0)


def np_self_evolution_kd_at(s, t, labels, gamma, temperature):
    """The per-position loss with the prior weights `gamma` `[...]` given."""
    mixture = (1 - gamma[..., None]) * np.exp(np_log_softmax(s, temperature))
    mixture += gamma[..., None] * np_prior(t, labels, temperature)
    return np_kl(np_log_softmax(t, temperature), np.log(mixture))


def np_self_evolution_kd(s, t, labels, mask, hard_fraction, gamma_max, temperature):
    gamma = np_self_evolution_gammas(s, t, labels, mask, hard_fraction, gamma_max, temperature)
    return np_self_evolution_kd_at(s, t, labels, gamma, temperature)


# --- xi self-distillation (methods.md item 2) --------------------------------------------------------


@pytest.mark.parametrize("xi", [-0.5, 0.0, 0.7, 1.5, 3.5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_xi_self_distillation_matches_numpy(xi, temperature):
    s, t = random_logits(seed=30)
    labels, mask = random_labels(seed=30), random_mask("bool", seed=30)
    per_token = np_xi(s, t, labels, xi, temperature)
    for reduction in ("none", "mean"):
        got = xi_self_distillation(s, t, labels, xi=xi, temperature=temperature, mask=mask, reduction=reduction)
        np.testing.assert_allclose(got, np_reduce(per_token, mask, reduction), rtol=2e-5, atol=2e-5)


def test_xi_mixed_target_equals_weighted_sum_of_two_ces_at_1_5():
    s, t = random_logits(seed=31)
    labels, mask = random_labels(seed=31), random_mask("bool", seed=31)
    to_teacher = np_reduce(np_soft_ce(np.exp(np_log_softmax(t)), np_log_softmax(s)), mask, "mean")
    expected = 1.5 * to_teacher - 0.5 * cross_entropy(s, labels, mask=mask)
    np.testing.assert_allclose(xi_self_distillation(s, t, labels, xi=1.5, mask=mask), expected, rtol=1e-5)


def test_xi_zero_is_cross_entropy_to_labels():
    s, t = random_logits(seed=32)
    labels, mask = random_labels(seed=32), random_mask("bool", seed=32)
    got = xi_self_distillation(s, t, labels, xi=0.0, mask=mask, reduction="none")
    np.testing.assert_allclose(got, cross_entropy(s, labels, mask=mask, reduction="none"), rtol=1e-6)


def test_xi_one_is_cross_entropy_to_teacher_with_forward_kl_gradient():
    s, t = random_logits(seed=33)
    labels = random_labels(seed=33)
    got = xi_self_distillation(s, t, labels, xi=1.0, temperature=2.0, reduction="none")
    np.testing.assert_allclose(got, np_soft_ce(np.exp(np_log_softmax(t, 2.0)), np_log_softmax(s, 2.0)), rtol=1e-5)
    grad = jax.jit(jax.grad(lambda s_: xi_self_distillation(s_, t, labels, xi=1.0, temperature=2.0)))(s)
    np.testing.assert_allclose(grad, jax.jit(jax.grad(lambda s_: forward_kl(s_, t, temperature=2.0)))(s), atol=1e-7)


def test_xi_above_one_is_unbounded_below():
    s, t = random_logits(seed=34, shape=(1, VOCAB))
    t[0, 0] = -10.0  # the teacher gives the label little mass, so tau's label entry is negative
    labels = np.array([0])
    values = []
    for gap in (10.0, 100.0, 1000.0):
        s[0, 0] = -gap
        values.append(float(xi_self_distillation(s, t, labels, xi=2.0)))
    assert values[0] > values[1] > values[2] and values[2] < -500


def test_xi_sum_count_over_micro_batches_equals_full_batch_mean():
    s, t = random_logits(seed=37)
    labels, mask = random_labels(seed=37), random_mask("bool", seed=37)
    mask[1] = False  # one micro-batch with no valid position
    loss = jax.jit(functools.partial(xi_self_distillation, xi=1.5, temperature=2.0, reduction="sum_count"))
    pieces = [loss(s_, t_, y_, mask=m_) for s_, t_, y_, m_ in micro_batches(s, t, labels, mask)]
    accumulated = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(
        accumulated, xi_self_distillation(s, t, labels, xi=1.5, temperature=2.0, mask=mask), rtol=1e-5
    )


def test_xi_under_jit_with_traced_weights_and_vmap_agrees_with_eager():
    s, t = random_logits(seed=38)
    labels, mask = random_labels(seed=38), random_mask("bool", seed=38)
    eager = xi_self_distillation(s, t, labels, xi=1.5, temperature=2.0, mask=mask, reduction="none")
    jitted = jax.jit(
        lambda xi, temperature: xi_self_distillation(
            s, t, labels, xi=xi, temperature=temperature, mask=mask, reduction="none"
        )
    )(1.5, 2.0)
    row_sum = functools.partial(xi_self_distillation, xi=1.5, temperature=2.0, reduction="sum")
    per_row = jax.jit(jax.vmap(lambda *a: row_sum(*a[:3], mask=a[3])))(s, t, labels, mask)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(per_row, np.asarray(eager).sum(-1), rtol=1e-5, atol=1e-6)


def test_warn_if_unregularised_warns_once_only_for_xi_above_one_without_weight_decay():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert not warn_if_unregularised(1.0, 0.0)
        assert not warn_if_unregularised(1.5, 1e-4)
        assert warn_if_unregularised(1.5, 0.0)
        assert warn_if_unregularised(3.5, 0)
    assert len(caught) == 1 and "unbounded below" in str(caught[0].message)


# --- PS-KD (methods.md item 5) -------------------------------------------------------------------------


def test_pskd_alpha_grows_linearly_to_alpha_T():
    np.testing.assert_allclose([pskd_alpha(e, 4) for e in range(4)], [0.2, 0.4, 0.6, 0.8])
    assert pskd_alpha(9, 10, alpha_T=0.5) == 0.5
    with pytest.raises(ValueError, match="num_epochs must be > 0"):
        pskd_alpha(0, 0)


def test_pskd_target_is_one_hot_at_alpha_zero_and_from_the_initial_buffer():
    labels = random_labels(seed=35)
    probs = np.exp(np_log_softmax(random_logits(seed=35)[0])).astype(np.float32)
    onehot = np_onehot(labels)
    np.testing.assert_array_equal(pskd_targets(labels, probs, 0.0), onehot)
    buffer = pskd_initial_buffer(labels, VOCAB)
    np.testing.assert_array_equal(buffer, onehot)
    np.testing.assert_allclose(pskd_targets(labels, buffer, pskd_alpha(0, 10)), onehot)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_pskd_targets_match_formula_and_sum_to_one(alpha):
    labels = random_labels(seed=36)
    probs = np.exp(np_log_softmax(random_logits(seed=36)[0]))
    expected = (1 - alpha) * np_onehot(labels) + alpha * probs
    for given_labels in (labels, np_onehot(labels)):
        got = pskd_targets(given_labels, probs.astype(np.float32), alpha)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.sum(got, axis=-1), 1.0, rtol=1e-6)


def test_pskd_targets_reject_mismatched_labels():
    with pytest.raises(ValueError, match="labels must be integer"):
        pskd_targets(np.zeros((4, 3)), np.zeros((4, 6, VOCAB)), 0.5)


# --- Borup & Andersen, kernel form (methods.md item 3) -----------------------------------------------


def kernel_problem(seed=40, n=12, m=5):
    rng = np.random.default_rng(seed)
    x, query = rng.uniform(-2, 2, size=(n, 1)), rng.uniform(-2, 2, size=(m, 1))
    rbf = lambda a, b: np.exp(-0.5 * (a - b.T) ** 2)
    y_star = np.sin(2 * x[:, 0])
    return rbf(x, x), rbf(query, x), y_star + 0.3 * rng.normal(size=n), y_star


def test_krr_operator_matches_numpy_and_runs_in_jax():
    K, _, _, _ = kernel_problem()
    expected = K @ np.linalg.inv(K + 0.1 * np.eye(len(K)))
    got = krr_operator(K, 0.1)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jax.jit(krr_operator)(jnp.asarray(K), 0.1), expected, atol=1e-4)


def test_alpha_one_gives_plain_krr_every_step():
    K, _, y, _ = kernel_problem()
    iterates = self_distillation_iterates(K, y, 0.1, 1.0, 5)
    assert iterates.shape == (5, len(y))
    np.testing.assert_allclose(iterates, np.broadcast_to(krr_operator(K, 0.1) @ y, iterates.shape), rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7])
def test_iterates_follow_the_recursion(alpha):
    K, _, y, _ = kernel_problem()
    A = krr_operator(K, 0.1)
    iterates = self_distillation_iterates(K, y, 0.1, alpha, 3)
    np.testing.assert_allclose(iterates[0], A @ y, rtol=1e-12)
    np.testing.assert_allclose(iterates[2], A @ (alpha * y + (1 - alpha) * iterates[1]), rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_iterates_converge_to_the_limit_at_training_points(alpha):
    K, K_query, y, _ = kernel_problem()
    iterates = self_distillation_iterates(K, y, 0.1, alpha, 400)
    np.testing.assert_allclose(iterates[-1], self_distillation_limit(K, K, y, 0.1, alpha), atol=1e-8)
    # The limit is KRR with the regularisation amplified to lam / alpha, at any query point.
    amplified = K_query @ np.linalg.solve(K + 0.1 / alpha * np.eye(len(K)), y)
    np.testing.assert_allclose(self_distillation_limit(K_query, K, y, 0.1, alpha), amplified, rtol=1e-9)


def test_best_ground_truth_weight_minimises_the_error_to_the_target():
    K, _, y, y_star = kernel_problem()
    A = krr_operator(K, 0.05)
    y_prev = self_distillation_iterates(K, y, 0.05, 0.2, 3)[-1]
    grid = np.linspace(-3.0, 3.0, 60001)
    errors = [np.sum((A @ (a * y + (1 - a) * y_prev) - y_star) ** 2) for a in grid]
    best = float(best_ground_truth_weight(A, y, y_prev, y_star))
    assert abs(best - grid[int(np.argmin(errors))]) <= grid[1] - grid[0]
    assert np.sum((A @ (best * y + (1 - best) * y_prev) - y_star) ** 2) <= min(errors) + 1e-12
    jitted = jax.jit(best_ground_truth_weight)(*(jnp.asarray(a) for a in (A, y, y_prev, y_star)))
    np.testing.assert_allclose(jitted, best, rtol=1e-3)


def test_best_ground_truth_weight_is_one_when_alpha_does_not_matter():
    K, _, y, y_star = kernel_problem()
    assert float(best_ground_truth_weight(krr_operator(K, 0.1), y, y, y_star)) == 1.0


# --- Self-Evolution KD (methods.md item 6) ---------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_difficulty_matches_numpy(temperature):
    s, t = random_logits(seed=41)
    labels, mask = random_labels(seed=41), random_mask("bool", seed=41)
    got = token_difficulty(s, t, labels, temperature=temperature, mask=mask)
    expected = np_reduce(np_difficulty(s, t, labels, temperature), mask, "none")
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("hard_fraction, gamma_max", [(0.5, 0.5), (0.2, 0.9), (1.0, 0.3)])
@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_self_evolution_kd_matches_numpy(hard_fraction, gamma_max, mask_kind):
    s, t = random_logits(seed=42)
    labels, mask = random_labels(seed=42), random_mask(mask_kind, seed=42)
    expected = np_self_evolution_kd(s, t, labels, mask, hard_fraction, gamma_max, 1.5)
    got = self_evolution_kd(
        s, t, labels, hard_fraction=hard_fraction, gamma_max=gamma_max, temperature=1.5, mask=mask, reduction="none"
    )
    np.testing.assert_allclose(got, np_reduce(expected, mask, "none"), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("hard_fraction, gamma_max", [(0.5, 0.0), (0.0, 0.5)])
def test_self_evolution_kd_without_mixing_is_forward_kl(hard_fraction, gamma_max):
    s, t = random_logits(seed=43)
    labels, mask = random_labels(seed=43), random_mask("bool", seed=43)
    got = self_evolution_kd(
        s, t, labels, hard_fraction=hard_fraction, gamma_max=gamma_max, temperature=2.0, mask=mask, reduction="none"
    )
    np.testing.assert_allclose(got, forward_kl(s, t, temperature=2.0, mask=mask, reduction="none"), rtol=1e-6)


def test_self_evolution_kd_mixes_exactly_the_hardest_tokens():
    s, t = random_logits(seed=44)
    labels, mask = random_labels(seed=44), random_mask("bool", seed=44)
    changed = self_evolution_kd(s, t, labels, mask=mask, reduction="none") != forward_kl(
        s, t, mask=mask, reduction="none"
    )
    difficulty = np.where(mask, np_difficulty(s, t, labels), -np.inf)
    assert np.sum(changed) == math.ceil(0.5 * mask.sum())
    assert np.min(difficulty[changed]) >= np.max(difficulty[~changed & mask])


def test_self_evolution_kd_sum_count_matches_mean_and_micro_batches_without_mixing():
    s, t = random_logits(seed=45)
    labels, mask = random_labels(seed=45), random_mask("bool", seed=45)
    total, count = self_evolution_kd(s, t, labels, mask=mask, reduction="sum_count")
    np.testing.assert_allclose(total / count, self_evolution_kd(s, t, labels, mask=mask), rtol=1e-6)
    loss = jax.jit(functools.partial(self_evolution_kd, gamma_max=0.0, reduction="sum_count"))
    pieces = [loss(s_, t_, y_, mask=m_) for s_, t_, y_, m_ in micro_batches(s, t, labels, mask)]
    accumulated = sum(p[0] for p in pieces) / sum(p[1] for p in pieces)
    np.testing.assert_allclose(accumulated, self_evolution_kd(s, t, labels, gamma_max=0.0, mask=mask), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma_max": 1.0}, r"gamma_max must be in \[0, 1\)"),
        ({"hard_fraction": 1.5}, r"hard_fraction must be in \[0, 1\]"),
    ],
)
def test_self_evolution_kd_rejects_bad_weights(kwargs, message):
    s, t = random_logits(seed=46)
    with pytest.raises(ValueError, match=message):
        self_evolution_kd(s, t, random_labels(seed=46), **kwargs)


# --- voting / snapshot ensembles (methods.md item 9) -----------------------------------------------


def test_ensemble_of_one_model_is_its_log_softmax():
    s, _ = random_logits(seed=47)
    got = ensemble_teacher_log_probs(s[None], temperature=2.0)
    np.testing.assert_allclose(got, np_log_softmax(s, 2.0), rtol=1e-5, atol=1e-6)
    vote = ensemble_teacher_log_probs(s[None], method="vote")
    np.testing.assert_array_equal(np.exp(vote), np_onehot(np.argmax(s, axis=-1)))


def test_ensemble_mean_matches_numpy():
    s, t = random_logits(seed=48)
    stack = np.stack([s, t, 0.5 * s])
    expected = np.log(np.mean(np.exp(np_log_softmax(stack, 3.0)), axis=0))
    np.testing.assert_allclose(ensemble_teacher_log_probs(stack, temperature=3.0), expected, rtol=1e-5, atol=1e-6)


def test_ensemble_vote_takes_the_majority_and_breaks_ties_by_mean_probability():
    stack = np.log(
        np.array(
            [
                [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],
                [[0.2, 0.7, 0.1], [0.1, 0.8, 0.1]],
                [[0.5, 0.1, 0.4], [0.2, 0.1, 0.7]],
            ],
            np.float32,
        )
    )
    # Row 0: votes 0, 1, 0 -> class 0. Row 1: votes 0, 1, 2 tie; class 1 has the highest mean probability.
    got = np.exp(ensemble_teacher_log_probs(stack, method="vote", vote_smoothing=0.03))
    np.testing.assert_allclose(got, [[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]], rtol=1e-6)


def test_ensemble_rejects_unknown_method_and_empty_stack():
    with pytest.raises(ValueError, match="method must be one of"):
        ensemble_teacher_log_probs(np.zeros((2, 3, 4)), method="median")
    with pytest.raises(ValueError, match="models >= 1"):
        ensemble_teacher_log_probs(np.zeros((0, 3, 4)))


# --- gradients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xi", "ensemble_mean"])
def test_gradients_match_finite_differences(name):
    s, t = random_logits(seed=49)
    labels, mask = random_labels(seed=49), random_mask("bool", seed=49)
    loss = {
        "xi": lambda s_, t_: xi_self_distillation(s_, t_, labels, xi=1.5, temperature=1.5, mask=mask),
        "ensemble_mean": lambda s_, t_: forward_kl(s_, ensemble_teacher_log_probs(jnp.stack([s_, t_])), mask=mask),
    }[name]
    with jax.enable_x64(True):
        args = (jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64))
        check_grads(jax.jit(loss), args, order=1, modes=("rev",))


def test_self_evolution_kd_gradient_holds_gamma_and_selection_fixed():
    s, t = random_logits(seed=50, scale=1.0)
    labels, mask = random_labels(seed=50), random_mask("bool", seed=50)
    gamma = np_self_evolution_gammas(s, t, labels, mask, 0.5, 0.5, 1.5)
    loss = functools.partial(
        self_evolution_kd, teacher_logits=t, labels=labels, temperature=1.5, mask=mask, reduction="sum"
    )
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(loss))(jnp.asarray(s, jnp.float64))

    def fixed_loss(s_):
        return np.sum(np.where(mask, np_self_evolution_kd_at(s_, t, labels, gamma, 1.5), 0.0))

    step, numerical = 1e-6, np.zeros(s.shape)
    for index in np.ndindex(s.shape):
        bump = np.zeros(s.shape)
        bump[index] = step
        numerical[index] = (fixed_loss(s + bump) - fixed_loss(s - bump)) / (2 * step)
    np.testing.assert_allclose(grad, numerical, atol=1e-7)


def test_all_masked_input_gives_zero_losses_and_finite_gradients():
    s, t = random_logits(seed=51)
    labels, mask = random_labels(seed=51), random_mask("all_masked", seed=51)
    losses = {
        "xi": functools.partial(xi_self_distillation, xi=1.5),
        "self_evolution_kd": self_evolution_kd,
    }
    values_and_grads = jax.jit(
        lambda s_: {
            name: jax.value_and_grad(lambda x, fn=fn: fn(x, t, labels, mask=mask))(s_) for name, fn in losses.items()
        }
    )(s)
    for name, (value, grad) in values_and_grads.items():
        assert value == 0.0 and np.all(np.isfinite(grad)), name


# --- hypothesis --------------------------------------------------------------------------------------


@jax.jit
def token_objectives(s, t, labels, mask, temperature, xi, gamma_max):
    def values(s_, t_):
        return {
            "xi": xi_self_distillation(s_, t_, labels, xi=xi, temperature=temperature, mask=mask),
            "self_evolution_kd": self_evolution_kd(
                s_, t_, labels, gamma_max=gamma_max, temperature=temperature, mask=mask
            ),
            "difficulty": reduce_tokens(token_difficulty(s_, t_, labels, temperature=temperature), mask),
        }

    # A sum of finite gradients is finite and a NaN or inf in any one of them spoils it: one backward
    # pass, through the student (the side that trains).
    grads = jax.grad(lambda s_: sum(values(s_, t).values()))(s)
    return values(s, t), grads


@settings(max_examples=30, deadline=None)
@given(
    pair=logit_pairs(),
    temperature=temperatures,
    xi=st.sampled_from([0.0, 0.5, 1.0]),
    gamma_max=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    label_seed=st.integers(0, 2**16),
)
def test_token_objectives_are_finite_nonnegative_with_finite_gradients(pair, temperature, xi, gamma_max, label_seed):
    s, t, mask = pair
    mask = np.ones(s.shape[:-1], bool) if mask is None else mask  # one program for both kinds of mask
    labels = np.random.default_rng(label_seed).integers(0, s.shape[-1], size=s.shape[:-1])
    values, grads = token_objectives(s, t, labels, mask, temperature, jnp.float32(xi), jnp.float32(gamma_max))
    for name, value in values.items():
        assert np.isfinite(value) and value >= -SLACK, name
    assert np.all(np.isfinite(np.asarray(grads, np.float32)))
    if np.array_equal(s, t) and gamma_max == 0.0:
        assert abs(float(values["self_evolution_kd"])) <= SLACK

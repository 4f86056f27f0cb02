"""The divergence catalogue: every name resolves to its objective (checked against numpy at T = 2), the default
temperature scaling is T^2 for Hinton's forward KL only, an explicit `scale_by_temperature_squared` overrides it,
and an unknown name is a one-line ConfigError listing the valid ones, also from config validation."""

import numpy as np
import pytest

from jdistill import losses
from jdistill.configs import load_config
from jdistill.errors import ConfigError

T, BETA = 2.0, 0.3
# The convention (docs/conventions.md, Temperatures): KD-style forward KL is multiplied by T^2, GKD-style not.
EXPECTED_T2 = {"forward_kl": True, "reverse_kl": False, "generalized_jsd": False, "tvd": False, "uld": False}


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def numpy_divergence(name, s, t, temperature=T, beta=BETA):
    """Per-position D(p_t, p_s) in float64 from the textbook formulas."""
    ps, pt = softmax(s / temperature), softmax(t / temperature)
    if name == "forward_kl":
        return kl(pt, ps)
    if name == "reverse_kl":
        return kl(ps, pt)
    if name == "tvd":
        return 0.5 * np.abs(pt - ps).sum(-1)
    if name == "uld":  # Boizard et al. 2024: L1 between the probabilities sorted in decreasing order
        return np.abs(-np.sort(-pt, axis=-1) - -np.sort(-ps, axis=-1)).sum(-1)
    m = beta * pt + (1 - beta) * ps
    return beta * kl(pt, m) + (1 - beta) * kl(ps, m)


def _logits(seed=0, shape=(3, 5, 11)):
    rng = np.random.default_rng(seed)
    return 2 * rng.normal(size=shape), 2 * rng.normal(size=shape)


def test_the_catalogue_is_exactly_the_five_divergences_with_their_scaling():
    assert {name: entry.scale_by_temperature_squared for name, entry in losses.DIVERGENCES.items()} == EXPECTED_T2
    for name, entry in losses.DIVERGENCES.items():
        assert losses.divergence(name) is entry and entry.name == name and entry.convention


@pytest.mark.parametrize("name", sorted(EXPECTED_T2))
def test_every_name_resolves_to_its_formula(name):
    s, t = _logits()
    mask = np.random.default_rng(1).random(s.shape[:-1]) > 0.3
    got, count = losses.divergence(name)(s, t, temperature=T, beta=BETA, mask=mask, reduction="sum_count")
    expected = numpy_divergence(name, s, t)[mask].sum()
    np.testing.assert_allclose(float(got), expected, rtol=2e-5)
    assert float(count) == mask.sum()


@pytest.mark.parametrize("name", sorted(EXPECTED_T2))
def test_default_scale_is_t_squared_for_forward_kl_only_and_an_explicit_choice_overrides(name):
    entry = losses.divergence(name)
    assert entry.temperature_scale(T) == (T**2 if EXPECTED_T2[name] else 1.0)
    assert entry.temperature_scale(T, True) == T**2
    assert entry.temperature_scale(T, False) == 1.0


def test_topk_betas_place_each_divergence_in_the_jsd_family():
    betas = {name: entry.topk_beta(BETA) for name, entry in losses.DIVERGENCES.items()}
    assert betas == {"forward_kl": 0.0, "reverse_kl": 1.0, "generalized_jsd": BETA, "tvd": None, "uld": None}


@pytest.mark.parametrize("bad", ["kl", "jsd", None])
def test_unknown_name_is_a_one_line_config_error_listing_the_names(bad):
    with pytest.raises(ConfigError) as info:
        losses.divergence(bad)
    message = str(info.value)
    assert f"unknown divergence {bad!r}" in message and "\n" not in message
    assert all(name in message for name in EXPECTED_T2)


def test_config_validation_reads_the_catalogue():
    for name in EXPECTED_T2:
        assert load_config("default", [f"distill.objective={name}"]).distill.objective == name
    with pytest.raises(ConfigError) as info:
        load_config("default", ["distill.objective=kl"])
    message = str(info.value)
    assert "distill.objective expected one of forward_kl, reverse_kl, generalized_jsd, tvd, uld, got 'kl'" in message
    assert "\n" not in message

"""The kd recipe trains the objective it names: with each divergence its loss equals the numpy formula, scaled by
T^2 only for forward KL unless `scale_by_temperature_squared` says otherwise; the chunked path (`vocab_chunk`) and
the cached top-k recipe at k = vocab give the same numbers; unknown objectives are one-line config errors."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.recipes.cached_topk import CachedTopK
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.recipes.registry import build_recipe
from tests.losses.test_divergences import EXPECTED_T2, numpy_divergence, softmax

T, BETA, DISTILL_WEIGHT, LABEL_WEIGHT = 2.0, 0.3, 0.7, 0.4
BATCH, SEQ, WIDTH, VOCAB = 2, 6, 5, 13


class LinearLM:
    """A stand-in for a language model: fixed features and an output head, read the way the kd recipe reads a
    Transformer (`model(inputs).logits`, `model(inputs, logits=False).features`, `.aux` (a dense model's: no
    router losses), `model.head_weights()`)."""

    def __init__(self, features, head, bias):
        self.features, self.head, self.bias = (jnp.asarray(a, jnp.float32) for a in (features, head, bias))

    def __call__(self, inputs, logits=True):
        del inputs
        logits_out = self.features @ self.head + self.bias if logits else None
        return SimpleNamespace(features=self.features, logits=logits_out, aux={})

    def head_weights(self):
        return self.head, self.bias


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    student, teacher = (
        LinearLM(rng.normal(size=(BATCH, SEQ, WIDTH)), rng.normal(size=(WIDTH, VOCAB)), 0.5 * rng.normal(size=VOCAB))
        for _ in range(2)
    )
    batch = {
        "inputs": np.zeros((BATCH, SEQ), np.int32),
        "targets": rng.integers(0, VOCAB, (BATCH, SEQ)),
        "mask": rng.random((BATCH, SEQ)) > 0.25,
    }
    return student, teacher, batch


def _numpy_loss(objective, student, teacher, batch, scale):
    """distill_weight * scale * sum_mask D + label_weight * sum_mask CE, and the count, in float64."""
    s = np.asarray(student.features, np.float64) @ np.asarray(student.head, np.float64) + np.asarray(student.bias)
    t = np.asarray(teacher.features, np.float64) @ np.asarray(teacher.head, np.float64) + np.asarray(teacher.bias)
    mask = batch["mask"]
    ce = -np.log(np.take_along_axis(softmax(s), batch["targets"][..., None], -1)[..., 0])
    distill = numpy_divergence(objective, s, t, temperature=T, beta=BETA)
    return DISTILL_WEIGHT * scale * distill[mask].sum() + LABEL_WEIGHT * ce[mask].sum(), mask.sum()


def _explicit(override):
    """The keyword for an explicit choice; none at all for the default (so the field's default is what is tested)."""
    return {} if override is None else {"scale_by_temperature_squared": override}


def _kd(objective, **kwargs):
    return KnowledgeDistillation(
        objective=objective,
        temperature=T,
        beta=BETA,
        distill_weight=DISTILL_WEIGHT,
        label_weight=LABEL_WEIGHT,
        **kwargs,
    )


@pytest.mark.parametrize("override", [None, True, False])
@pytest.mark.parametrize("objective", sorted(EXPECTED_T2))
def test_kd_recipe_loss_is_the_named_divergence_with_its_temperature_scaling(objective, override):
    student, teacher, batch = _problem()
    scaled = EXPECTED_T2[objective] if override is None else override
    expected, count = _numpy_loss(objective, student, teacher, batch, T**2 if scaled else 1.0)
    for vocab_chunk in (0, 5):  # the dense path and the chunked large-vocabulary path
        recipe = _kd(objective, vocab_chunk=vocab_chunk, **_explicit(override))
        (total, got_count), _, _ = recipe.loss(student, teacher, (), batch, None)
        np.testing.assert_allclose(float(total), expected, rtol=2e-5, err_msg=f"vocab_chunk={vocab_chunk}")
        assert float(got_count) == count


@pytest.mark.parametrize("override", [None, True])
@pytest.mark.parametrize("objective", ["forward_kl", "reverse_kl", "generalized_jsd"])
def test_cached_topk_at_k_equal_vocab_is_the_kd_recipe(objective, override):
    student, teacher, batch = _problem(seed=1)
    teacher_log_probs = np.log(softmax(np.asarray(teacher(None).logits, np.float64) / T))
    ids = np.argsort(-teacher_log_probs, axis=-1)
    cached = dict(batch, teacher_topk_ids=ids, teacher_topk_logprobs=np.take_along_axis(teacher_log_probs, ids, -1))
    recipe = CachedTopK(
        top_k=VOCAB,
        objective=objective,
        temperature=T,
        beta=BETA,
        distill_weight=DISTILL_WEIGHT,
        label_weight=LABEL_WEIGHT,
        **_explicit(override),
    )
    (total, count), _, _ = recipe.loss(student, None, (), cached, None)
    scaled = EXPECTED_T2[objective] if override is None else override
    expected, expected_count = _numpy_loss(objective, student, teacher, batch, T**2 if scaled else 1.0)
    np.testing.assert_allclose(float(total), expected, rtol=1e-4)
    assert float(count) == expected_count


def test_cached_topk_refuses_a_divergence_outside_the_jsd_family():
    with pytest.raises(ValueError, match="objective must be one of forward_kl, reverse_kl, generalized_jsd"):
        CachedTopK(objective="tvd")


@pytest.mark.parametrize("recipe", ["kd", "cached_topk", "feature_kd"])
def test_unknown_objective_in_options_is_a_one_line_config_error(recipe):
    config = load_config("default", [f"distill.recipe={recipe}", "distill.options.objective=kl"])
    with pytest.raises(ConfigError) as info:
        build_recipe(config.distill)
    message = str(info.value)
    assert f"recipe {recipe!r}" in message and "unknown divergence 'kl'" in message and "\n" not in message
    assert "forward_kl, reverse_kl, generalized_jsd, tvd" in message


@pytest.mark.parametrize("objective", sorted(EXPECTED_T2))
def test_the_default_preset_scales_each_objective_by_its_convention(objective):
    recipe = build_recipe(load_config("default", [f"distill.objective={objective}"]).distill)
    assert recipe.temperature_scale == (4.0**2 if EXPECTED_T2[objective] else 1.0)  # the preset's T = 4
    explicit = load_config("default", [f"distill.objective={objective}", "distill.scale_by_temperature_squared=true"])
    assert build_recipe(explicit.distill).temperature_scale == 4.0**2

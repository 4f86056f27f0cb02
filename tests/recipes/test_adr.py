"""ADR recipe: rectified labels (lam_i = lam when the EMA teacher is right; rows sum to 1), the annealing
schedules, PGD examples inside the epsilon ball, the EMA teacher's exact move, and the preset end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.losses import adr_labels
from jdistill.recipes.adr import AnnealingSelfDistillationRectification as ADR
from jdistill.train import make_train_step
from jdistill.train.job import run_job
from tests.recipes.family_a import train_log
from tests.recipes.ssl_robust_helpers import (
    batch,
    leaves,
    prepared_state,
    tiny_job,
    tiny_model,
)

RECIPE = ADR(total_steps=10, epsilon=0.1, step_size=0.03, attack_steps=3)


def test_schedules_anneal_tau_and_lam_with_a_cosine():
    tau, lam = RECIPE.schedules(0)
    assert float(tau) == pytest.approx(2.5) and float(lam) == pytest.approx(0.7)
    tau, lam = RECIPE.schedules(5)
    assert float(tau) == pytest.approx(2.25) and float(lam) == pytest.approx(0.825)
    tau, lam = RECIPE.schedules(10)
    assert float(tau) == pytest.approx(2.0) and float(lam) == pytest.approx(0.95)


def test_rectified_labels_use_lam_when_the_teacher_is_right_and_sum_to_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 10)).astype(np.float32) * 3
    labels = logits.argmax(-1)
    tau, lam = RECIPE.schedules(0)
    targets = np.asarray(adr_labels(logits, labels, temperature=tau, lam=lam))
    probs = np.asarray(jax.nn.softmax(logits / float(tau)))
    np.testing.assert_allclose(targets, 0.7 * probs + 0.3 * np.eye(10)[labels], rtol=1e-5, atol=1e-6)
    wrong = (labels + 1) % 10
    targets = np.asarray(adr_labels(logits, wrong, temperature=tau, lam=lam))
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    lam_i = np.clip(0.7 - (probs.max(-1) - probs[np.arange(16), wrong]), 0, 1)
    np.testing.assert_allclose(
        targets, lam_i[:, None] * probs + (1 - lam_i[:, None]) * np.eye(10)[wrong], rtol=1e-5, atol=1e-6
    )


def test_adversarial_examples_stay_in_the_epsilon_ball_and_the_image_range():
    graphdef, params = nnx.split(tiny_model())
    data = batch()
    targets = jax.nn.one_hot(data["labels"], 10)
    attack = jax.jit(lambda params, x: RECIPE.attack(nnx.merge(graphdef, params), x, targets, jax.random.key(0)))
    adversarial = np.asarray(attack(params, jnp.asarray(data["inputs"])))
    delta = np.abs(adversarial - data["inputs"])
    assert delta.max() <= 0.1 + 1e-6 and delta.max() > 0.05
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


def test_ema_teacher_moves_by_its_decay_and_the_step_counter_advances():
    graphdef, state, optimizer = prepared_state(RECIPE, tiny_model())
    step = make_train_step(graphdef, RECIPE, optimizer, seed=0)
    state, _ = step(state, None, batch(0))
    before = leaves(state.recipe_state["teacher"])
    state, metrics = step(state, None, batch(1))
    assert int(state.recipe_state["step"]) == 2
    assert float(metrics["lam"]) == pytest.approx(float(RECIPE.schedules(1)[1]))
    moved = False
    for old, new, student in zip(before, leaves(state.recipe_state["teacher"]), leaves(state.params), strict=True):
        np.testing.assert_allclose(new, 0.995 * old + 0.005 * student, rtol=1e-5, atol=1e-7)
        moved |= not np.allclose(new, old)
    assert moved


@pytest.mark.slow  # ~12 s quietly; moved out of the default suite for its 15-minute budget (session 9)
def test_adr_preset_anneals_over_the_stage_and_reports_robust_accuracy(tmp_path, untrained):
    config = load_config("adr", tiny_job(steps=20, extra=["distill.options.attack_steps=2"]))
    metrics = run_job(config, tmp_path / "run", progress=False)["student_adr"]
    before = untrained(config)
    assert metrics["nll"] < before["nll"] - 0.1 and metrics["robust_accuracy"] <= metrics["accuracy"]
    # the job binds the schedules to the stage's 20 steps: lam 0.7 -> 0.95 and tau 2.5 -> 2.0 by its last step
    lam, tau = (train_log(tmp_path / "run", "student_adr", key) for key in ("lam", "tau"))
    assert lam[0] < 0.71 and tau[0] > 2.49 and lam[-1] > 0.94 and tau[-1] < 2.01
    assert lam == sorted(lam) and tau == sorted(tau, reverse=True)

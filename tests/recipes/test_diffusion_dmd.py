"""The two-network step through the recipe interface (generator + fake score, each with its own optimizer, and the
fake score's update ratio), DMD / DMD2's recipe, and the halt on a diverging fake score."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdistill.diffusion.schedules import EDM, predict
from jdistill.errors import NonFiniteError
from jdistill.recipes.diffusion_dmd import FAKE_SCORE, DiffusionDMD
from jdistill.train.nonfinite import NonFiniteGuard
from jdistill.train.state import TrainState
from jdistill.train.step import make_train_step
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    defaults = dict(
        teacher_run="fake", data="8gaussians", class_conditional=False, num_pairs=8, pair_sampler="euler", pair_nfe=2
    )
    return DiffusionDMD(**{**defaults, **options})


@dataclasses.dataclass(frozen=True)
class SingleNetworkDMD(DiffusionDMD):
    """DMD as a single-network recipe: the fake score is a fixed part of the recipe state."""

    def second_network(self):
        return None


OPTIMIZER = optax.adam(1e-2)


def stepper(r, graphdef):
    step = make_train_step(graphdef, r, OPTIMIZER, seed=0)

    def run(params, state):
        params, state = jax.tree.map(jnp.array, (params, state))  # the step donates its input
        return step(TrainState(jnp.zeros((), jnp.int32), params, OPTIMIZER.init(params), state), None, BATCH)

    return run


BATCH = fake_teacher.batch()


def leaves_equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture
def mlp_teacher(monkeypatch):
    return fake_teacher.install(monkeypatch, EDM())


def test_fake_score_lr_zero_generator_step_is_the_single_network_dmd_step(mlp_teacher):
    """Fake-score lr 0 (2 updates per step): the generator's step equals the single-network DMD step (the fake score a
    fixed part of the state). A diverging fake score keeps the whole state and halts the stage naming it."""
    r0 = recipe(fake_learning_rate=0.0, fake_updates_per_step=2)
    graphdef, params, state = fake_teacher.student_of(r0)
    two_network = stepper(r0, graphdef)
    two, metrics = two_network(params, state)
    one, single_metrics = stepper(SingleNetworkDMD(**vars(r0)), graphdef)(params, state)
    assert bool(metrics["finite"]) and float(metrics["fake_score_loss"]) > 0
    assert int(two.recipe_state[FAKE_SCORE]["opt_state"][0].count) == 2  # the update ratio
    assert not leaves_equal(one.params, params)  # the generator moved
    assert leaves_equal(two.recipe_state[FAKE_SCORE]["params"], state[FAKE_SCORE]["params"])
    for got, want in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    assert float(metrics["loss"]) == pytest.approx(float(single_metrics["loss"]), rel=1e-6)

    poisoned = dict(state, **{FAKE_SCORE: jax.tree.map(lambda x: x * jnp.nan, state[FAKE_SCORE])})
    new, metrics = two_network(params, poisoned)
    assert not bool(metrics["finite"]) and not bool(metrics[f"finite_{FAKE_SCORE}"])
    assert leaves_equal(new.params, params)
    assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(new.recipe_state[FAKE_SCORE]["params"]))
    guard = NonFiniteGuard("student_diffusion_dmd", 0, lambda: None)
    with pytest.raises(NonFiniteError, match="second network 'fake_score' diverged"):
        guard.push(0, metrics)
        guard.flush()


@pytest.mark.slow
def test_the_generator_reads_the_fake_score_after_its_updates(mlp_teacher):
    """lr > 0 with 3 updates per step: the fake score moves 3 times and the generator's step is the single-network
    step with the fake score this step ended with, not the one it started with."""
    r3 = recipe(fake_learning_rate=1e-2, fake_updates_per_step=3)
    graphdef, params, state = fake_teacher.student_of(r3)
    single = stepper(SingleNetworkDMD(**vars(r3)), graphdef)
    three, _ = stepper(r3, graphdef)(params, state)
    assert int(three.recipe_state[FAKE_SCORE]["opt_state"][0].count) == 3
    assert not leaves_equal(three.recipe_state[FAKE_SCORE]["params"], state[FAKE_SCORE]["params"])
    moved, _ = single(params, dict(state, **{FAKE_SCORE: three.recipe_state[FAKE_SCORE]}))
    stale, _ = single(params, state)
    for got, want in zip(jax.tree.leaves(three.params), jax.tree.leaves(moved.params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    pairs = zip(jax.tree.leaves(three.params), jax.tree.leaves(stale.params), strict=True)
    assert not all(np.allclose(a, b, atol=1e-6) for a, b in pairs)


def test_dmd_loss_pairs_and_start(mlp_teacher):
    from jdistill.diffusion.samplers import make_sampler

    r = recipe()
    graphdef, params, state = fake_teacher.student_of(r)
    loss = jax.jit(lambda params, state: r.loss(nnx.merge(graphdef, params), None, state, BATCH, jax.random.key(1)))
    value, metrics, _ = loss(params, state)
    np.testing.assert_allclose(
        float(value), float(metrics["distribution_matching"]) + 0.25 * float(metrics["regression"]), rtol=1e-6
    )
    # the fake score starts as the teacher: at the start the distribution-matching gradient is zero
    assert float(metrics["distribution_matching"]) < 1e-12 and float(metrics["regression"]) > 0
    # the regression pairs are the teacher's ODE samples from their noises
    pairs = state["pairs"]
    run, p = make_sampler(mlp_teacher.model, EDM(), sampler="euler", nfe=2)
    np.testing.assert_allclose(pairs["samples"], run(p, 80.0 * pairs["noise"], None, None), rtol=1e-4, atol=1e-5)
    # the generator starts as the teacher: its one-step sample is the teacher's x0 at t_max
    run, p = r.student_sampler(nnx.merge(graphdef, params), 1)
    want = predict(EDM(), mlp_teacher.model, 80.0 * pairs["noise"], 80.0).x0
    np.testing.assert_allclose(run(p, 80.0 * pairs["noise"], None, jax.random.key(0)), want, rtol=1e-4, atol=1e-5)
    # DMD2: no regression pairs nor term
    r2 = recipe(variant="dmd2")
    _, _, state2 = fake_teacher.student_of(r2)
    assert "pairs" not in state2 and FAKE_SCORE in state2


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="variant"):
        DiffusionDMD(variant="dmd3")
    with pytest.raises(ValueError, match="generator_steps: 1"):
        DiffusionDMD(generator_steps=4)
    with pytest.raises(ValueError, match="fake_updates_per_step"):
        DiffusionDMD(fake_updates_per_step=0)
    with pytest.raises(ValueError, match="regression_metric"):
        DiffusionDMD(regression_metric="lpips")


@pytest.mark.slow
def test_dmd_meets_rl_subtracts_the_class_reward(monkeypatch):
    from jdistill.models import ModelConfig, Transformer
    from jdistill.recipes import diffusion_dmd

    fake_teacher.install(monkeypatch, EDM(), images=True)
    classifier = Transformer(
        ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, patch_size=4, num_classes=10),
        rngs=nnx.Rngs(0),
    )
    monkeypatch.setattr(diffusion_dmd, "reward_classifier", lambda seed: classifier)
    options = dict(teacher_run="fake", num_pairs=8, pair_sampler="euler", pair_nfe=2)
    plain, rl = DiffusionDMD(**options), DiffusionDMD(**options, reward_weight=0.5)
    graphdef, params, state = fake_teacher.student_of(rl, images=True)
    batch = fake_teacher.batch(images=True)
    loss = jax.jit(
        lambda r, p, s: r.loss(nnx.merge(graphdef, p), None, s, batch, jax.random.key(1))[:2], static_argnums=0
    )
    value, metrics = loss(rl, params, state)
    base_value, _ = loss(plain, params, {k: v for k, v in state.items() if k != "reward"})
    assert float(metrics["reward"]) < 0  # a log-probability
    np.testing.assert_allclose(float(value), float(base_value) - 0.5 * float(metrics["reward"]), rtol=1e-5)
    grads = jax.grad(lambda p: loss(rl, p, state)[0])(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_dmd_meets_rl_refuses_the_digits_fd_network_as_its_reward(monkeypatch):
    fake_teacher.install(monkeypatch, EDM(), images=True)
    with pytest.raises(ValueError, match="reward_seed 0 is the digits-FD network's, which scores the samples"):
        DiffusionDMD(teacher_run="fake", reward_weight=0.5, reward_seed=0)
    DiffusionDMD(teacher_run="fake", reward_seed=0)  # no reward: the seed is unused

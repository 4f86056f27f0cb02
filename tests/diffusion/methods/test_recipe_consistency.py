import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.schedules import EDM, RectifiedFlow
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_consistency import VARIANTS, DiffusionConsistency
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    defaults = dict(
        teacher_run="fake",
        data="8gaussians",
        class_conditional=False,
        num_steps=8,
        hyper_sd_stages=(8, 4, 2, 1),
        total_steps=8,
        steps_per_epoch=1.0,
    )
    return DiffusionConsistency(**{**defaults, **options})


def loss_and_grads(r, params, state, graphdef, epoch=0.0, seed=0):
    def f(params):
        value, _, _ = r.loss(nnx.merge(graphdef, params), None, state, fake_teacher.batch(epoch), jax.random.key(seed))
        return value

    return jax.value_and_grad(f)(params)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_from_the_teacher(monkeypatch, variant):
    fake_teacher.install(monkeypatch, EDM())
    r = recipe(variant=variant)
    graphdef, params, state = fake_teacher.student_of(r)
    value, grads = loss_and_grads(r, params, state, graphdef)
    assert np.isfinite(float(value)) and float(value) > 0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params), nfe=2)
    samples = run(sampler_params, 80.0 * jax.random.normal(jax.random.key(1), (4, 2)), None, jax.random.key(2))
    assert samples.shape == (4, 2) and bool(jnp.all(jnp.isfinite(samples)))


def test_student_starts_as_the_teacher_and_the_boundary_is_exact(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, RectifiedFlow())
    r = recipe()
    graphdef, params, _state = fake_teacher.student_of(r)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(teacher.model)), strict=True):
        np.testing.assert_array_equal(got, want)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    f = r.consistency_fn(nnx.merge(graphdef, params), None)
    assert r.boundary == 0.0
    np.testing.assert_array_equal(f(x, jnp.zeros(5)), x)
    assert float(jnp.abs(f(x, jnp.ones(5)) - x).max()) > 1e-3


def test_edm_raw_output_student_starts_as_the_teachers_denoiser(monkeypatch):
    # Consistency Models' scalings on EDM's raw output: f differs from the teacher's D only by sigma -> sigma - t_min.
    from jdistill.diffusion.schedules import predict

    teacher = fake_teacher.install(monkeypatch, EDM())
    r = recipe(output="raw")
    graphdef, params, _state = fake_teacher.student_of(r)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    f = r.consistency_fn(nnx.merge(graphdef, params), None)
    for sigma in (0.05, 0.3, 1.0, 5.0, 80.0):
        t = jnp.full((5,), sigma)
        denoised = predict(r.schedule, teacher.model, sigma * x, t).x0
        np.testing.assert_allclose(f(sigma * x, t), denoised, rtol=0.05, atol=0.05 * sigma)
    np.testing.assert_array_equal(f(x, jnp.full((5,), r.boundary)), x)
    auto = recipe(output="auto").consistency_fn(nnx.merge(graphdef, params), None)  # raw for EDM
    np.testing.assert_array_equal(auto(x, jnp.full((5,), 0.3)), f(x, jnp.full((5,), 0.3)))


def test_cd_takes_the_teacher_solver_it_is_given(monkeypatch):
    from jdistill.diffusion.methods import consistency as cm

    fake_teacher.install(monkeypatch, EDM())
    seen, cd_pair = [], cm.cd_pair
    monkeypatch.setattr(cm, "cd_pair", lambda *args, solver: seen.append(solver) or cd_pair(*args, solver=solver))
    for solver in ("heun", "ddim"):
        r = recipe(variant="cd", teacher_solver=solver)
        graphdef, params, state = fake_teacher.student_of(r)
        student, batch = nnx.merge(graphdef, params), fake_teacher.batch()
        jax.eval_shape(r.loss, student, None, state, batch, jax.random.key(0))  # traced only, not run
    assert seen == ["heun", "ddim"]
    assert recipe().teacher_solver == "ddim"  # measured better here than Consistency Models' heun
    with pytest.raises(ValueError, match="teacher_solver"):
        recipe(teacher_solver="euler")


def test_target_network_is_an_ema_of_the_student(monkeypatch):
    fake_teacher.install(monkeypatch, EDM())
    r = recipe(target_decay=0.75, ema_decay=0.5, ema_warmup=False)
    _graphdef, params, state = fake_teacher.student_of(r)
    moved = jax.tree.map(lambda p: p + 1.0, params)
    new = r.after_update(state, moved, 1)
    for before, after in zip(jax.tree.leaves(state["target"]), jax.tree.leaves(new["target"]), strict=True):
        np.testing.assert_allclose(after, before + 0.25, rtol=1e-6, atol=1e-6)
    for before, after in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(new["ema"]), strict=True):
        np.testing.assert_allclose(after, before + 0.5, rtol=1e-6, atol=1e-6)
    for before, after in zip(jax.tree.leaves(state["teacher"]), jax.tree.leaves(new["teacher"]), strict=True):
        np.testing.assert_array_equal(after, before)


def test_hyper_sd_targets_the_end_of_the_current_stages_segment(monkeypatch):
    fake_teacher.install(monkeypatch, RectifiedFlow())
    r = recipe(variant="hyper_sd")
    index = jnp.arange(8)
    first = r._target_times(None, index, None, fake_teacher.batch(epoch=0.0))  # 8 segments: one teacher step
    np.testing.assert_allclose(first, r.grid[1:], atol=1e-7)
    last = r._target_times(None, index, None, fake_teacher.batch(epoch=7.0))  # 1 segment: the boundary
    np.testing.assert_allclose(last, 0.0, atol=1e-7)


def test_tdd_decoupled_guidance_drops_a_fraction_to_unguided_null(monkeypatch):
    fake_teacher.install(monkeypatch, EDM())
    r = recipe(variant="tdd", tdd_uncond_fraction=0.25, tdd_guidance_min=2.0, tdd_guidance_max=4.0)
    labels, scale = r._decoupled_guidance(jax.random.key(0), jnp.zeros(4000, jnp.int32), 10)
    dropped = np.asarray(labels) == 10
    assert abs(dropped.mean() - 0.25) < 0.03
    assert np.all(np.asarray(scale)[dropped] == 1.0)
    kept = np.asarray(scale)[~dropped]
    assert kept.min() >= 2.0 and kept.max() <= 4.0


def test_bad_options_are_one_line_errors(monkeypatch):
    fake_teacher.install(monkeypatch, EDM())
    with pytest.raises(ValueError, match="variant"):
        recipe(variant="lcm")
    with pytest.raises(ValueError, match="hyper_sd_stages"):
        recipe(variant="hyper_sd", num_steps=6)
    with pytest.raises(ConfigError, match="teacher_run"):
        DiffusionConsistency().teacher()


KEY = jax.random.key(0)


@pytest.mark.slow
def test_hyper_sd_feedback_stage_adds_the_reward_loss_from_reward_start(monkeypatch):
    from jdistill.models import ModelConfig, Transformer
    from jdistill.recipes import diffusion_consistency

    fake_teacher.install(monkeypatch, EDM(), images=True)
    config = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, patch_size=4)
    reward = Transformer(config, rngs=nnx.Rngs(7))
    monkeypatch.setattr(diffusion_consistency, "reward_classifier", lambda seed: reward)
    options = dict(variant="hyper_sd", data="images", class_conditional=True)
    plain, fed = recipe(**options), recipe(**options, reward_weight=2.0, reward_start=0.5)
    graphdef, params, state = fake_teacher.student_of(fed, images=True)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, state["reward"], nnx.state(reward)))

    def loss_fn(r):
        def f(p, batch):
            value, metrics, _ = r.loss(nnx.merge(graphdef, p), None, state, batch, KEY)
            return value, metrics

        jitted = jax.jit(jax.value_and_grad(f, has_aux=True))
        return lambda epoch: (lambda out: (*out[0], out[1]))(jitted(params, fake_teacher.batch(epoch, images=True)))

    plain_loss, fed_loss = loss_fn(plain), loss_fn(fed)
    before, _, _ = plain_loss(2.0)
    value, metrics, _ = fed_loss(2.0)  # step 2 of 8: still trajectory-segmented distillation only
    assert float(value) == pytest.approx(float(before), rel=1e-6) and float(metrics["reward_loss"]) > 0
    before, _, plain_grads = plain_loss(6.0)
    value, metrics, grads = fed_loss(6.0)  # step 6: the feedback stage
    assert float(value) == pytest.approx(float(before) + 2.0 * float(metrics["reward_loss"]), rel=1e-5)
    difference = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, plain_grads)
    assert max(jax.tree.leaves(difference)) > 1e-6  # the reward reaches the student through its prediction
    with pytest.raises(ValueError, match="reward_weight"):
        recipe(variant="tcd", reward_weight=1.0)
    with pytest.raises(ValueError, match="digits-FD"):
        recipe(**options, reward_weight=1.0, reward_seed=0)

"""CausVid (recipes diffusion_video_edm, diffusion_causvid): the student is the teacher's network made block-causal,
trained by DMD2 on its autoregressive rollout against the bidirectional teacher and fake score."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.load import TrainedDenoiser
from jdistill.diffusion.methods.causvid import VideoDenoiser, generate_video
from jdistill.diffusion.schedules import EDM
from jdistill.errors import ConfigError
from jdistill.recipes import diffusion_distill_base as base
from jdistill.recipes.diffusion_causvid import DiffusionCausVid, DiffusionVideoEDM
from jdistill.recipes.diffusion_dmd import FAKE_SCORE
from tests.diffusion.methods import fake_teacher
from tests.diffusion.test_causvid import CONFIG, _perturbed
from tests.recipes.test_diffusion_dmd import leaves_equal


@pytest.fixture
def video_teacher(monkeypatch):
    # the student is built from fake_teacher.DIT: the teacher has the same config
    model = VideoDenoiser(fake_teacher.DIT, EDM(), 3, num_classes=10, causal=False, rngs=nnx.Rngs(0))
    model = _perturbed(model, jax.random.key(1))
    config = types.SimpleNamespace(distill=types.SimpleNamespace(options={"data": "images"}))
    teacher = TrainedDenoiser(model, EDM(), config, 0)
    monkeypatch.setattr(base, "trained_teacher", lambda run_dir: teacher)
    monkeypatch.setattr(base, "_teacher_graphdef", lambda run_dir: nnx.split(teacher.model)[0])
    return teacher


@pytest.mark.slow
def test_the_video_teacher_denoises_counting_videos():
    r = DiffusionVideoEDM(frames=3)
    batch = fake_teacher.batch(images=True)
    video, labels = r.clean_data(batch, jax.random.key(0))
    assert video.shape == (8, 3, 8, 8, 1) and labels is batch["labels"]
    model = r.wraps_student()(CONFIG, nnx.Rngs(0))
    assert isinstance(model, VideoDenoiser) and not model.causal
    with pytest.raises(ValueError, match="frames"):
        DiffusionVideoEDM(frames=0)


@pytest.mark.slow
def test_causvid_distils_the_bidirectional_teacher_into_the_causal_student(video_teacher):
    r = DiffusionCausVid(teacher_run="fake", generator_steps=2)
    graphdef, params, state = fake_teacher.student_of(r, images=True)
    student = nnx.merge(graphdef, params)
    assert student.causal and leaves_equal(params, nnx.state(video_teacher.model))  # the teacher's weights, causal
    moved = jax.tree.map(lambda x: x * 1.05, state[FAKE_SCORE]["params"])
    state = dict(state, **{FAKE_SCORE: dict(state[FAKE_SCORE], params=moved)})
    batch = fake_teacher.batch(images=True)

    @jax.jit
    def loss(params):
        return r.loss(nnx.merge(graphdef, params), None, state, batch, jax.random.key(1))[0]

    value, grads = jax.value_and_grad(loss)(params)
    assert float(value) > 0 and max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
    run, p = r.student_sampler(student, 2)
    video = run(p, 80.0 * jax.random.normal(jax.random.key(2), (4, 3, 8, 8, 1)), jnp.arange(4), jax.random.key(3))
    assert video.shape == (4, 3, 8, 8, 1) and bool(jnp.all(jnp.isfinite(video)))


@pytest.mark.slow
def test_causvid_needs_a_video_teacher(monkeypatch):
    fake_teacher.install(monkeypatch, EDM(), images=True)
    with pytest.raises(ConfigError, match="CausVid distils a video teacher"):
        DiffusionCausVid(teacher_run="fake").check(None)
    np.testing.assert_equal(DiffusionCausVid(teacher_run="fake").generator_steps, 2)


@pytest.mark.slow
def test_the_ode_initialisation_regresses_the_causal_rollout_on_the_teachers_pairs(video_teacher):
    """ode_init_steps > 0: the student starts from the teacher's weights regressed on the teacher's ODE pairs (the
    regression loss falls, the EMA starts there too); 0 leaves the teacher's weights."""
    options = dict(teacher_run="fake", generator_steps=2, num_pairs=8, pair_sampler="euler", pair_nfe=2)
    r = DiffusionCausVid(**options, ode_init_steps=4, ode_init_batch=8, ode_init_learning_rate=1e-2)
    _, start, _ = fake_teacher.student_of(DiffusionCausVid(**options), images=True)
    assert leaves_equal(start, nnx.state(video_teacher.model))
    _, params, state = fake_teacher.student_of(r, images=True)
    assert not leaves_equal(params, start) and leaves_equal(state["ema"], params)
    teacher_state = {"teacher": nnx.state(video_teacher.model)}
    pairs = r.make_pairs(teacher_state, jax.random.fold_in(jax.random.key(3), 11))  # student_of's init key
    loss = jax.jit(lambda p: r.ode_regression_loss(p, pairs, jax.random.key(0)))
    assert float(loss(params)) < 0.9 * float(loss(start))
    # each rollout is compared with its own pair: a one-step student whose pairs are its own rollouts has loss 0
    one = DiffusionCausVid(**{**options, "generator_steps": 1}, ode_init_batch=8)
    own = generate_video(
        one.causal_module(start), one.schedule, pairs["noise"], one.times(), pairs["labels"], jax.random.key(0),
        one.context_time,
    )  # fmt: skip
    own_loss = jax.jit(lambda p: one.ode_regression_loss(p, dict(pairs, samples=own), jax.random.key(1)))
    assert float(own_loss(start)) < 1e-8
    with pytest.raises(ValueError, match="ode_init_steps"):
        DiffusionCausVid(teacher_run="fake", ode_init_steps=-1)

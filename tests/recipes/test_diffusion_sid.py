"""SiD's recipe: the generator's loss is SiD's fused loss on the two scores, the fake score learns at the teacher's
training times, the generator starts as the teacher at sigma_init; the generator recipes' config checks."""

import types

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.diffusion.methods import dmd
from jdistill.diffusion.methods.sid import sid_generator_loss
from jdistill.diffusion.schedules import EDM, predict
from jdistill.errors import ConfigError
from jdistill.recipes import diffusion_distill_base as base
from jdistill.recipes.diffusion_dmd import FAKE_SCORE, DiffusionDMD
from jdistill.recipes.diffusion_sid import DiffusionSiD
from tests.diffusion.methods import fake_teacher


def test_sid_loss_is_the_fused_loss_on_the_two_scores(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, EDM())
    r = DiffusionSiD(teacher_run="fake", data="8gaussians", class_conditional=False, generator_time=2.5)
    graphdef, params, state = fake_teacher.student_of(r)
    generator = nnx.merge(graphdef, params)
    # the fake score moved away from the teacher (at the start the two agree and the loss is 0)
    fake_params = jax.tree.map(lambda x: 1.1 * x, state[FAKE_SCORE]["params"])
    state = dict(state, **{FAKE_SCORE: dict(state[FAKE_SCORE], params=fake_params)})
    rng = jax.random.key(3)
    recipe_loss = lambda p: r.loss(nnx.merge(graphdef, p), None, state, fake_teacher.batch(), rng)[0]
    value, grads = jax.jit(jax.value_and_grad(recipe_loss))(params)
    fake = nnx.merge(nnx.graphdef(teacher.model), fake_params)

    def reference(params):
        sample_key, time_key, noise_key = jax.random.split(rng, 3)
        x_g, _ = r.generator_sample(nnx.merge(graphdef, params), sample_key, fake_teacher.BATCH)
        t = dmd.grid_times(EDM(), time_key, fake_teacher.BATCH, 0.2, 1.0)
        x_t = dmd.renoise(EDM(), x_g, t, jax.random.normal(noise_key, x_g.shape))
        real_x0, fake_x0 = (predict(EDM(), model, x_t, t).x0 for model in (teacher.model, fake))
        return sid_generator_loss(x_g, real_x0, fake_x0, 1.2)

    want_value, want_grads = jax.jit(jax.value_and_grad(reference))(params)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-4)
    # the gradient flows through x_t into both scores too (SiD), not only through x_g
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)
    assert float(value) != 0.0
    # the generator starts as the teacher at sigma_init = 2.5: x = D(2.5 z; 2.5)
    z = jax.random.normal(jax.random.key(4), (5, 2))
    run, p = r.student_sampler(generator, 1)
    want = predict(EDM(), teacher.model, 2.5 * z, 2.5).x0
    np.testing.assert_allclose(run(p, 80.0 * z, None, jax.random.key(0)), want, rtol=1e-4, atol=1e-5)
    assert r.fake_score_times(rng, 4) is None  # the teacher's training times


def test_generator_checks(monkeypatch):
    teacher = fake_teacher.install(monkeypatch, EDM())
    teacher_config = types.SimpleNamespace(
        student=types.SimpleNamespace(model=fake_teacher.DIT), distill=types.SimpleNamespace(options={})
    )
    monkeypatch.setattr(base, "trained_teacher", lambda run_dir: teacher._replace(config=teacher_config))
    config = load_config("diffusion_sid", ["distill.options.teacher_run=fake"])
    with pytest.raises(ConfigError, match=r"student\.model\.num_layers: the generator and the fake score are copies"):
        DiffusionSiD(teacher_run="fake").check(config)
    with pytest.raises(ValueError, match="generator_steps"):
        DiffusionDMD(teacher_run="fake", generator_steps=0)


def test_presets_load():
    for preset, recipe in (
        ("diffusion_dmd", "diffusion_dmd"),
        ("diffusion_dmd2", "diffusion_dmd"),
        ("diffusion_sid", "diffusion_sid"),
    ):
        config = load_config(preset)
        assert config.distill.recipe == recipe
    assert load_config("diffusion_dmd2").distill.options["fake_updates_per_step"] == 5


def test_every_generator_entry_has_a_builder_and_a_preset():
    import importlib

    from jdistill.bench import diffusion_generators
    from jdistill.bench.diffusion_students import STUDENTS

    registered = set()
    for name, student in STUDENTS.items():
        module, _, function = student.build.partition(":")
        if module == diffusion_generators.__name__:
            assert callable(getattr(importlib.import_module(module), function)), name
            registered.add(name)
    assert registered == {
        *("dmd", "dmd2", "sid", "dmd_rl", "inference_time", "multi_student"),  # session 7
        *("dmd2_gan", "flash_dmd", "ladd", "phased_dmd", "emd", "disback", "causvid"),  # session 8
    }
    generator_recipes = ("diffusion_dmd", "diffusion_sid", "diffusion_ladd", "diffusion_phased_dmd", "diffusion_emd")
    for name, (preset, options, *extra) in diffusion_generators.GENERATORS.items():
        overrides = [f"distill.options.{key}={value}" for key, value in options.items()]
        overrides += list(extra[0] if extra else ())
        config = load_config(preset, overrides)
        assert config.distill.recipe in (*generator_recipes, "diffusion_disback"), name

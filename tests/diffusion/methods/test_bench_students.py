import importlib

import jax
import jax.numpy as jnp
import pytest

from jdistill.bench.diffusion_students import STUDENTS
from jdistill.diffusion.methods import bench_students
from jdistill.diffusion.schedules import RectifiedFlow
from jdistill.recipes.diffusion_consistency import DiffusionConsistency
from tests.diffusion.methods import fake_teacher


def test_every_registered_method_has_a_builder_and_a_preset():
    from jdistill.configs import load_config

    for name, student in STUDENTS.items():
        module, _, function = student.build.partition(":")
        if module == bench_students.__name__:
            assert callable(getattr(importlib.import_module(module), function)), name
            preset, options, *_ = bench_students.METHODS[function]
            config = load_config(preset, [f"distill.options.{key}={value}" for key, value in options.items()])
            assert config.distill.options["variant" if options else "teacher_run"] is not None


@pytest.mark.slow
def test_generator_draws_with_the_recipes_sampler(monkeypatch):
    fake_teacher.install(monkeypatch, RectifiedFlow())
    recipe = DiffusionConsistency(teacher_run="fake", data="8gaussians", class_conditional=False, num_steps=8)
    graphdef, params, _ = fake_teacher.student_of(recipe)
    from flax import nnx

    generator = bench_students.recipe_generator(recipe, nnx.merge(graphdef, params))
    labels = jnp.zeros((5,), jnp.int32)
    samples = generator.draw(2)(jax.random.key(0), labels)
    assert samples.shape == (5, 2) and not generator.conditional
    assert generator.forward(2)(jax.random.key(0), labels).shape == (5, 2)


def test_a_finished_student_run_is_loaded_and_an_interrupted_one_resumed(tmp_path, monkeypatch):
    import jdistill.diffusion.load
    import jdistill.train
    from jdistill.bench.diffusion import BenchContext

    calls = []
    monkeypatch.setattr(jdistill.train, "run_teacher_student", lambda config, run_dir, resume: calls.append(resume))
    monkeypatch.setattr(jdistill.diffusion.load, "load_denoiser", lambda run_dir: "student")
    context = BenchContext(tmp_path, None, {"digits": None}, {"digits": tmp_path / "teacher"}, None, 1.0)
    run_dir = context.student_dir("consistency", "digits", 0)
    assert bench_students._train_or_load(context, "consistency", "digits", 0) == "student"
    assert calls == [False]  # nothing there: trained from the start
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")  # started, with checkpoints that load, but not finished
    bench_students._train_or_load(context, "consistency", "digits", 0)
    assert calls == [False, True]  # resumed, not measured at its last checkpoint
    (run_dir / "summary.json").write_text("{}")
    assert bench_students._train_or_load(context, "consistency", "digits", 0) == "student"
    assert calls == [False, True]  # finished: loaded as it is

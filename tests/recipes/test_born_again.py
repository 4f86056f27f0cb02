"""Born-again networks: generation k is taught by generation k - 1 (generation 1 by the trained teacher), every
generation is the student architecture, and fewer than two generations is a config error."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.born_again import BornAgain
from jdistill.recipes.registry import build_recipe
from jdistill.train import job
from tests.recipes.family_a import tiny_job

OVERRIDES = tiny_job("distill.options.generations=2", steps=3)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_each_generation_is_taught_by_the_previous_one(tmp_path, data_dir, monkeypatch):
    teachers, results = {}, {}
    real_run_stage = job.run_stage

    def recording_run_stage(name, *args, teacher=None, **kwargs):
        teachers[name] = teacher
        results[name] = real_run_stage(name, *args, teacher=teacher, **kwargs)
        return results[name]

    monkeypatch.setattr(job, "run_stage", recording_run_stage)
    summary = job.run_job(load_config("born_again", OVERRIDES), tmp_path / "run", progress=False)
    generations = [f"student_born_again_gen{k}" for k in (1, 2)]
    assert list(results) == ["teacher", *generations] and set(generations) <= set(summary)
    assert teachers["teacher"] is None
    for previous, current in itertools.pairwise(["teacher", *generations]):
        assert teachers[current] is results[previous]
        assert all(
            np.array_equal(a, b)
            for a, b in zip(_leaves(teachers[current].params), _leaves(results[previous].params), strict=True)
        )
    # Each generation trained away from the shared initialisation, so its teacher differs from the one before.
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(_leaves(results[generations[0]].params), _leaves(results[generations[1]].params), strict=True)
    )


def test_one_generation_is_a_config_error():
    config = load_config("born_again", ["distill.options.generations=1"])
    with pytest.raises(ConfigError, match="generations must be >= 2"):
        build_recipe(config.distill)


def test_first_teacher_must_have_the_student_architecture():
    def params(d_model):
        config = ModelConfig(kind="classifier", num_layers=1, d_model=d_model, num_heads=2, mlp_dim=16)
        return nnx.split(Transformer(config, rngs=nnx.Rngs(0)))[1]

    with pytest.raises(ConfigError, match=r"teacher\.model"):
        BornAgain().init(params(8), params(16), jax.random.key(0))
    _, state = BornAgain().init(params(8), params(8), jax.random.key(0))
    assert state == ()

"""One path from config to compiled step: the ahead-of-time worker (`jdistill compile`, on 2 simulated CPU devices)
compiles a classifier recipe with per-example recipe state (dcs: bound to the training split's size) and an LM
recipe with gradient accumulation, and the compiled step's inputs (state, teacher, batch: every leaf's path, shape
and dtype) equal those of the training step `run_stage` builds, called on the pipeline's real first batch."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.data import teacher_cache
from jdistill.models import Transformer
from jdistill.recipes.cached_topk import CachedTopK
from jdistill.scale import compile as aot_compile
from jdistill.scale.aot import input_avals
from jdistill.scale.topologies import parse_topology
from jdistill.train.batch_spec import abstract_batch
from jdistill.train.job import STUDENT_INIT, TEACHER_INIT, checked_recipe
from jdistill.train.loop import stage_key, training_data
from jdistill.train.stage import build_stage, stage_facts

TINY = ["run.progress=false"] + [
    f"{stage}.{key}"
    for stage in ("teacher", "student")
    for key in ("model.d_model=16", "model.num_heads=2", "model.mlp_dim=32", "model.num_layers=1", "train.batch_size=8")
]
CASES = {"dcs": ("dcs", TINY), "lm_kd": ("lm_kd", TINY + ["data.seq_len=16", "student.train.grad_accum_steps=2"])}


def training_avals(config):
    """The input avals of the recipe stage's train step as `run_stage` builds it, on the real first batch."""
    recipe = checked_recipe(config)
    teacher_graphdef, teacher_params = nnx.split(
        Transformer(config.teacher.model, rngs=nnx.Rngs(params=stage_key(0, TEACHER_INIT)))
    )
    batch = training_data(config.data, config.student, config.seed)[0]
    stage = build_stage(
        config.student,
        recipe=recipe,
        facts=stage_facts(config.student, config.data),
        batch=batch,
        seed=config.seed,
        init_key=stage_key(config.seed, STUDENT_INIT),
        mesh_config=config.mesh,
        teacher_graphdef=teacher_graphdef,
        teacher_params=teacher_params,
    )
    jax.eval_shape(stage.train_step, *stage.step_args(batch))  # the training step accepts exactly these
    return input_avals(stage.step_args(batch))


def test_compiled_step_takes_exactly_what_the_training_step_takes(data_dir):
    jobs = [
        {"config": preset, "overrides": overrides, "topology": "h100:1x2", "label": name}
        for name, (preset, overrides) in CASES.items()
    ]
    reports = aot_compile.run_aot(jobs, parse_topology("h100:1x2"))
    for report, (name, (preset, overrides)) in zip(reports, CASES.items(), strict=True):
        assert "error" not in report, report
        assert report["devices"] == 2 and report["mesh"]["data"] == 2
        expected = training_avals(load_config(preset, overrides))
        assert report["input_avals"] == [list(map(_jsonable, leaf)) for leaf in expected], name
        if name == "dcs":  # the bound recipe's per-example table has the training split's size
            weights = [leaf for leaf in expected if "recipe_state" in leaf[0]]
            assert weights and weights[0][1] == [
                stage_facts(load_config(preset, overrides).student, load_config(preset, overrides).data).num_examples
            ]


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("top_k", [3])
def test_abstract_batch_of_a_cached_teacher_equals_the_attached_batch(data_dir, tmp_path, top_k):
    """The fields a recipe's data adds (cached top-k) are part of the abstract batch, with the pipeline's dtypes."""
    config = load_config("cached_topk", TINY + ["data.seq_len=16", f"distill.options.top_k={top_k}"])
    recipe = CachedTopK(top_k=top_k)
    dataset = training_data(config.data, config.student, config.seed)
    windows = teacher_cache_windows(config)
    ids = teacher_cache.visited_windows(len(windows), 1, seed=config.seed, batch_size=8)
    records = ((windows.tokens(w), np.zeros((16, top_k), np.int32), np.zeros((16, top_k), np.float16)) for w in ids)
    teacher_cache.write_teacher_cache(
        tmp_path / "cache",
        records,
        ids,
        seq_len=16,
        top_k=top_k,
        vocab_size=256,
        split="train",
        logprob_dtype="float16",
    )
    cache = teacher_cache.TeacherCache(tmp_path / "cache")
    real = teacher_cache.attach_teacher_cache(
        dataset, cache, num_windows=len(windows), seed=config.seed, batch_size=8, top_k=top_k
    )[0]
    expected = {key: (tuple(value.shape), str(value.dtype)) for key, value in real.items()}
    abstract = abstract_batch(config.data, config.student, recipe)
    assert {key: (spec.shape, str(spec.dtype)) for key, spec in abstract.items()} == expected


def teacher_cache_windows(config):
    from jdistill.train.teacher_cache import train_windows

    return train_windows(config.data)

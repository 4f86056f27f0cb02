"""Session-wide fixtures: one offline data dir with both embedded datasets, shared by every test."""

import atexit
import os
import shutil
import tempfile

# The suite is CPU-only (TPU programs are compiled ahead of time in subprocesses); this also keeps an installed
# libtpu from probing for TPUs and logging to stderr in every process the tests start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache per test session, shared with the processes the tests start (CLI runs, sharded and
# multi-host workers, the notebook's kernel): the tiny jobs and steps of different tests compile identical
# programs from fresh closures, and a cache hit costs a tenth of a compile. Fresh per session, so no run reads
# another's executables.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jdistill-tests-xla-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# The suite's programs are tiny and compiled once each: compile time, not run time, dominates it. LLVM's cheapest
# optimisation level for XLA:CPU code makes the default suite ~20 % faster (tests/models/test_generate.py 73 -> 56 s,
# tests/recipes/test_gkd.py 48 -> 38 s); the processes the tests start inherit it. Every comparison in the suite is
# between programs compiled alike, or against numpy with a tolerance.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# In case jax was imported (and read its environment) before this file.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
)

from jdistill.data import load_source  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir in which `digits` and `pystdlib_text` are built (offline) once per session; exported as
    JDISTILL_DATA_DIR so configs and CLI subprocesses read it."""
    directory = tmp_path_factory.mktemp("tensorflow_datasets")
    for name in ("digits", "pystdlib_text"):
        load_source(name, "train", directory)
    os.environ["JDISTILL_DATA_DIR"] = str(directory)
    return directory


@pytest.fixture(scope="session")
def untrained(data_dir):
    """`untrained(config, stage="student")`: the metrics a job's stage reports (evaluation plus the recipe's extra
    metrics) for its model at initialisation, before any step -- the same init key, recipe and evaluation batches
    as the stage. What an end-to-end run must beat to show that it trained at all."""
    import jax
    from flax import nnx

    from jdistill.recipes import Supervised
    from jdistill.recipes.base import RunFacts
    from jdistill.recipes.registry import build_recipe
    from jdistill.train import inputs
    from jdistill.train.evaluation import stage_evaluation
    from jdistill.train.job import STUDENT_INIT, TEACHER_INIT
    from jdistill.train.loop import build_student, stage_key, steps_per_epoch

    def metrics(config, stage: str = "student") -> dict:
        stage_config = getattr(config, stage)
        recipe = Supervised() if stage == "teacher" else build_recipe(config.distill)
        model_config, train_config = stage_config.model, stage_config.train
        recipe = recipe.bind(
            RunFacts(
                total_steps=train_config.steps,
                steps_per_epoch=steps_per_epoch(config.data, train_config, model_config.kind),
                num_examples=inputs.train_examples(config.data, model_config.kind),
                batch_size=train_config.batch_size,
                weight_decay=train_config.weight_decay,
            )
        )
        init_key = stage_key(config.seed, TEACHER_INIT if stage == "teacher" else STUDENT_INIT)
        model = build_student(stage_config, recipe, init_key)
        graphdef, params = nnx.split(model)
        score, _, batches = stage_evaluation(config.data, model_config, None, graphdef, recipe.forward_params)
        result = score(params)  # the stage's own evaluation (bits per byte with the run tokenizer's byte lengths)
        return dict(result, **recipe.extra_metrics(model, batches, jax.random.fold_in(init_key, 11)))

    return metrics

"""A stage loaded back from its checkpoint re-evaluates to the metrics the run recorded (`summary.json` and the
stage's `result.json`): the loaded parameters are the trained ones, not a fresh initialisation."""

import json

import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.recipes.registry import build_recipe
from jdistill.train import inputs, run_job
from jdistill.train.loop import evaluate
from jdistill.train.restore import load_stage
from jdistill.train.step import make_eval_step
from tests.train.test_lm_job import TINY_LM

OVERRIDES = (
    TINY_LM
    + ["run.baseline=false", "run.tensorboard=false"]
    + [
        f"{stage}.train.{key}=3"
        for stage in ("teacher", "student")
        for key in ("steps", "eval_every", "log_every", "checkpoint_every")
    ]
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("restore_metrics") / "run"
    summary = run_job(load_config("lm_kd", OVERRIDES), run_dir)
    return run_dir, summary


@pytest.mark.parametrize("stage", ["teacher", "student_kd"])
def test_a_loaded_stage_re_evaluates_to_its_recorded_metrics(run, stage):
    run_dir, _ = run
    model, config = load_stage(run_dir, stage)
    stage_config = config.teacher if stage == "teacher" else config.student
    forward_params = None if stage == "teacher" else build_recipe(config.distill).forward_params
    graphdef, params = nnx.split(model)
    metrics = evaluate(
        make_eval_step(graphdef, forward_params),
        params,
        inputs.eval_batches(config.data, stage_config.model.kind),
        kind=stage_config.model.kind,
    )
    recorded = json.loads((run_dir / "summary.json").read_text())[stage]
    result = json.loads((run_dir / stage / "result.json").read_text())["metrics"]
    for name in ("accuracy", "nll", "ece", "bits_per_byte", "count"):
        assert metrics[name] == pytest.approx(recorded[name], rel=1e-5, abs=1e-7), name
        assert metrics[name] == pytest.approx(result[name], rel=1e-5, abs=1e-7), name


def test_a_fresh_model_would_not_pass(run):
    """Guards the test above: the trained student's NLL differs from an untrained one's on these batches."""
    run_dir, summary = run
    _, config = load_stage(run_dir, "student_kd")
    from jdistill.models import Transformer

    graphdef, params = nnx.split(Transformer(config.student.model, rngs=nnx.Rngs(0)))
    fresh = evaluate(make_eval_step(graphdef), params, inputs.eval_batches(config.data, "lm"), kind="lm")
    assert abs(fresh["nll"] - summary["student_kd"]["nll"]) > 1e-3

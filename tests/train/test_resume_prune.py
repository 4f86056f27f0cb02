"""A job with `student.prune` interrupted (in the teacher, then after the prune) and resumed reproduces the
uninterrupted job: the same prune.json, the same student_init weights, the same metrics."""

import json

import pytest
from safetensors.numpy import load_file

from jdistill.configs import load_config
from jdistill.train.job import run_job
from tests.train.llm_tiny import TINY_LLM

STAGES = ("teacher", "student_scratch", "student_pruned", "student_pruned_ce", "student_kd")


@pytest.mark.slow  # three tiny jobs: ~50 s of CPU
def test_resumed_prune_job_reproduces_the_uninterrupted_one(tmp_path, data_dir):
    config = load_config("llm_kd", TINY_LLM)
    full = run_job(config, tmp_path / "full")
    resumed_dir = tmp_path / "resumed"
    assert run_job(config, resumed_dir, interrupt_at=("teacher", 2)) == {}
    assert not (resumed_dir / "student_init").exists()
    assert run_job(config, resumed_dir, resume=True, interrupt_at=("student_pruned_ce", 2)) == {}
    assert (resumed_dir / "student_init" / "model.safetensors").is_file()
    resumed = run_job(config, resumed_dir, resume=True)
    for name in ("prune.json",):
        assert json.loads((resumed_dir / name).read_text()) == json.loads((tmp_path / "full" / name).read_text())
    weights = [load_file(run / "student_init" / "model.safetensors") for run in (tmp_path / "full", resumed_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][key] == weights[1][key]).all() for key in weights[0])
    for stage in STAGES:
        for key in ("nll", "perplexity", "bits_per_byte", "accuracy", "params"):
            assert resumed[stage][key] == full[stage][key], (stage, key)

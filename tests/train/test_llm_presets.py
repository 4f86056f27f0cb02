"""The llm_kd and llm_gkd presets end to end at a tiny size: a BPE tokenizer trained on the corpus, the teacher,
block-influence pruning into `student_init/`, and every student stage (scratch, pruned, pruned + CE, the recipe,
the `run.compare` stage), each scored in perplexity and bits per byte."""

import json
import math

import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.hf.prune import prune_layers
from jdistill.train import job
from jdistill.train.evaluation import stage_evaluation
from jdistill.train.restore import load_stage
from tests.train.llm_tiny import TINY_GKD, TINY_LLM

LM_KEYS = ("perplexity", "bits_per_byte", "nll", "accuracy")


def _spy_stages(monkeypatch):
    """Record (stage name, init_from of its stage config) of every stage the job trains."""
    seen = []
    real = job.run_stage

    def spy(name, stage_config, **kwargs):
        seen.append((name, stage_config.init_from))
        return real(name, stage_config, **kwargs)

    monkeypatch.setattr(job, "run_stage", spy)
    return seen


@pytest.mark.slow  # ~26 s quietly; moved out of the default suite for its 15-minute budget (session 9)
def test_llm_kd_prunes_the_teacher_and_reports_every_stage(tmp_path, data_dir, monkeypatch):
    seen = _spy_stages(monkeypatch)
    run_dir = tmp_path / "run"
    summary = job.run_job(load_config("llm_kd", TINY_LLM), run_dir)
    stages = ["teacher", "student_scratch", "student_pruned", "student_pruned_ce", "student_kd"]
    assert [name for name in summary if isinstance(summary[name], dict)] == stages
    for stage in stages:
        assert all(math.isfinite(summary[stage][key]) for key in LM_KEYS), stage
    init = f"hf:{run_dir / 'student_init'}"
    # scratch really starts at random (no init_from); the pruned baselines and the recipe start from student_init
    assert seen == [("teacher", None), ("student_scratch", None), ("student_pruned_ce", init), ("student_kd", init)]
    record = json.loads((run_dir / "prune.json").read_text())
    assert record["method"] == "block_influence" and record["teacher_layers"] == 2 and len(record["keep"]) == 1
    assert record["keep"] == [int(np.argmax(record["block_influence"]))]  # the most influential block is kept
    assert (run_dir / "student_init" / "tokenizer.json").is_file()
    assert json.loads((run_dir / "student_init" / "config.json").read_text())["num_hidden_layers"] == 1
    # student_pruned is exactly the teacher pruned to the kept blocks, evaluated
    teacher, config = load_stage(run_dir, "teacher")
    pruned = prune_layers(teacher, record["keep"])
    graphdef, params = nnx.split(pruned)
    score, _, _ = stage_evaluation(config.data, config.student.model, None, graphdef)
    direct = score(params)
    for key in LM_KEYS:
        assert summary["student_pruned"][key] == direct[key], key
    params = {summary[stage]["params"] for stage in ("student_scratch", "student_pruned", "student_kd")}
    assert len(params) == 1
    assert summary["student_pruned"]["params"] < summary["teacher"]["params"]
    # the pruned init is far better than a random one before any step
    assert summary["student_pruned"]["nll"] < summary["student_scratch"]["nll"]


@pytest.mark.slow  # 43 s; GKD's default-suite checks: tests/recipes/test_gkd.py
def test_llm_gkd_reports_on_policy_and_off_policy_stages(tmp_path, data_dir):
    config = load_config("llm_gkd", TINY_GKD)
    assert config.run.compare_distill("offpolicy", config.distill).options["lam"] == 0.0
    assert config.run.compare_distill("offpolicy", config.distill).options["sample_temperature"] == 1.0
    summary = job.run_job(config, tmp_path / "run")
    stages = ["teacher", "student_scratch", "student_pruned", "student_pruned_ce", "student_gkd", "student_offpolicy"]
    assert [name for name in summary if isinstance(summary[name], dict)] == stages
    for stage in stages:
        assert all(math.isfinite(summary[stage][key]) for key in LM_KEYS), stage
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    on_policy = {r["stage"]: r["on_policy"] for r in records if r["split"] == "train" and "on_policy" in r}
    assert on_policy == {"student_gkd": 1.0, "student_offpolicy": 0.0}

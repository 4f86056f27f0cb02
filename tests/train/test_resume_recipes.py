"""Recipes with state across steps (EMA teacher, snapshot ring, per-example buffer) resume exactly: the recipe
state is in the checkpoint, so an interrupted and resumed student stage writes the same losses."""

import json

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.train import run_job

TINY = [
    f"{stage}.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("model.d_model", 16),
        ("model.num_heads", 2),
        ("model.mlp_dim", 32),
        ("model.num_layers", 1),
        ("train.steps", 6),
        ("train.warmup_steps", 1),
        ("train.eval_every", 6),
        ("train.log_every", 1),
        ("train.checkpoint_every", 3),
        ("train.batch_size", 16),
    )
]
TINY += [
    "data.eval_batch_size=128",
    "data.eval_max_batches=1",
    "run.progress=false",
    "run.plot=false",
    "run.baseline=false",
    "run.tensorboard=false",
]


def _student_losses(run_dir, stage):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train" and r["stage"] == stage]


@pytest.mark.parametrize(
    "preset,extra",
    [
        ("snapshot_kd", ["distill.options.snapshot_every=2", "distill.options.num_snapshots=2"]),
        ("dino", []),
    ],
)
def test_stateful_recipe_resumes_exactly(tmp_path, data_dir, preset, extra):
    config = load_config(preset, TINY + extra)
    stage = f"student_{config.distill.recipe}"
    run_job(config, tmp_path / "full")
    assert run_job(config, tmp_path / "resumed", interrupt_at=(stage, 3)) == {}
    run_job(config, tmp_path / "resumed", resume=True)
    full, resumed = _student_losses(tmp_path / "full", stage), _student_losses(tmp_path / "resumed", stage)
    assert [s for s, _ in resumed] == [s for s, _ in full] == list(range(1, 7))
    np.testing.assert_allclose([loss for _, loss in resumed], [loss for _, loss in full], rtol=1e-6)

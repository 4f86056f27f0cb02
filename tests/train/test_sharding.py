"""The sharded KD step on 8 simulated CPU devices equals the single-device step.

The checks run in subprocesses (the device count is fixed when JAX starts): `sharded_checks.py` for the step on
five meshes, and the CLI on the LM preset with `mesh.data=1` and with `mesh.data=4 mesh.fsdp=2`.
Tolerance: losses within 1e-5 (relative), parameters within 1e-5 (absolute): float32 sums in another order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    return env


@pytest.fixture(scope="module")
def meshes():
    result = subprocess.run(
        [sys.executable, str(HERE / "sharded_checks.py")], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["data8", "data4_fsdp2", "data2_fsdp2_tensor2", "fsdp8"])
def test_sharded_step_equals_single_device(meshes, name):
    single, sharded = meshes["single"], meshes[name]
    assert single["devices"] == 1 and sharded["devices"] == 8
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(sharded["params"], single["params"], atol=1e-5)


def test_collectives_are_the_expected_ones(meshes):
    assert not any(meshes["single"]["collectives"].values())
    data = meshes["data8"]["collectives"]
    assert data["all-reduce"] >= 1 and data["all-gather"] == 0  # pure data parallel: one gradient all-reduce
    for name in ("data4_fsdp2", "fsdp8"):
        assert meshes[name]["collectives"]["all-gather"] > 0  # FSDP gathers the parameter shards per use
    tensor = meshes["data2_fsdp2_tensor2"]["collectives"]
    assert tensor["all-reduce"] > meshes["data4_fsdp2"]["collectives"]["all-reduce"]  # partial sums over heads


def test_the_config_batch_rule_reaches_the_layers_in_the_step(meshes):
    constraints = meshes["constraints"]
    assert constraints["data4_fsdp2"] == ["P(('data', 'fsdp'), None, None)"]
    assert constraints["data4_fsdp2_batch_data"] == ["P('data', None, None)"]


@pytest.mark.parametrize("name,fsdp", [("data4_fsdp2", 2), ("fsdp8", 8)])
def test_parameter_memory_per_device_is_about_one_over_fsdp(meshes, name, fsdp):
    result = meshes[name]
    assert result["param_shard_bytes"] <= 1.15 * result["param_bytes"] / fsdp  # only norms stay replicated
    # The compiled step's per-device arguments (params, AdamW moments, teacher, batch) shrink the same way.
    ratio = result["argument_bytes"] / meshes["data8"]["argument_bytes"]
    assert ratio <= 1.2 / fsdp


def _train_losses(run_dir: Path) -> dict:
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            losses[(record["stage"], record["step"])] = record["loss"]
    return losses


# the sharded step's equality with one device runs by default (test_sharded_step_equals_single_device)
@pytest.mark.slow
def test_cli_mesh_runs_write_the_same_losses(tmp_path, data_dir):
    tiny = [
        f"{stage}.{key}={value}"
        for stage in ("teacher", "student")
        for key, value in (
            ("model.d_model", 16),
            ("model.num_layers", 1),
            ("model.mlp_dim", 32),
            ("train.steps", 4),
            ("train.warmup_steps", 1),
            ("train.eval_every", 4),
            ("train.log_every", 1),
            ("train.checkpoint_every", 4),
            ("train.batch_size", 8),
        )
    ]
    tiny += [
        "data.seq_len=32",
        "data.eval_batch_size=8",
        "data.eval_max_batches=1",
        "run.progress=false",
        "run.plot=false",
        "run.baseline=false",
        "run.tensorboard=false",
    ]
    losses = []
    for mesh in (["mesh.data=1"], ["mesh.data=4", "mesh.fsdp=2"]):
        run_dir = tmp_path / "_".join(mesh)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "jdistill.cli",
                "train",
                "--config",
                "lm_kd",
                "--run-dir",
                str(run_dir),
                *tiny,
                *mesh,
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses.append(_train_losses(run_dir))
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 8
    for key, value in losses[0].items():
        assert losses[1][key] == pytest.approx(value, rel=1e-5), key

"""Multi-host on one machine: 2 processes x 4 CPU devices joined by `jax.distributed.initialize` (gloo
collectives) run three sharded KD steps (mesh data=4, fsdp=2) and match a 1-process 8-device run; the orbax
checkpoint both processes wrote restores in the 1-process run. Workers: multihost_worker.py."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_two_processes_match_one_process_and_checkpoints_cross_restore(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    checkpoints = tmp_path / "checkpoints"
    port = str(_free_port())
    worker = [sys.executable, str(HERE / "multihost_worker.py"), "multi"]
    processes = [
        subprocess.Popen(
            worker + [str(i), port, str(checkpoints)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    multi = _json_line(outputs[0][0])
    assert multi["processes"] == 2
    single_run = subprocess.run(
        [sys.executable, str(HERE / "multihost_worker.py"), "single", str(checkpoints)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert single_run.returncode == 0, single_run.stderr[-3000:]
    single = _json_line(single_run.stdout)
    assert single["processes"] == 1
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(multi["params"], single["params"], atol=1e-5)
    assert single["restored_step"] == 3
    np.testing.assert_array_equal(single["restored_params"], multi["params"])


# the in-process two-host equality test (same file) runs by default; this adds the CLI on top
@pytest.mark.slow
def test_cli_job_across_two_processes(tmp_path, data_dir):
    """`jdistill train` as 2 processes x 4 devices (JDISTILL_COORDINATOR): one run directory, metrics written
    once (by process 0), every stage trained and evaluated. Each host reads its own shard of the data, so the
    losses are not step-for-step those of a 1-process run (the step itself is: see the test above)."""
    tiny = [
        f"{stage}.{key}={value}"
        for stage in ("teacher", "student")
        for key, value in (
            ("model.d_model", 16),
            ("model.num_layers", 1),
            ("model.mlp_dim", 32),
            ("train.steps", 3),
            ("train.warmup_steps", 1),
            ("train.log_every", 1),
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
        "mesh.data=4",
        "mesh.fsdp=2",
    ]
    port = str(_free_port())
    run_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            PYTHONPATH=str(ROOT),
            JDISTILL_COORDINATOR=f"127.0.0.1:{port}",
            JDISTILL_NUM_PROCESSES="2",
            JDISTILL_PROCESS_ID=str(index),
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "jdistill.cli", "train", "--config", "lm_kd", "--run-dir", str(run_dir), *tiny],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    table_row = re.compile(r"^student_kd\s+[\d,]+\s", re.MULTILINE)
    assert table_row.search(outputs[0][0]) and not table_row.search(outputs[1][0])  # the table: process 0 only
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["split"], r["step"]) for r in records if r["split"] == "train"] == [
        (stage, "train", step) for stage in ("teacher", "student_kd") for step in (1, 2, 3)
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["student_kd"]["bits_per_byte"])
    samples = (run_dir / "student_kd" / "samples.jsonl").read_text().splitlines()  # both processes generate
    assert samples and all(json.loads(line)["stage"] == "student_kd" for line in samples)

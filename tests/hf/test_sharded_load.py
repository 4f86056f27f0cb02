"""Loading a Hugging Face checkpoint straight into a sharded layout (`from_pretrained(mesh=...)`, and a teacher's
`init_from` in a job): on 8 simulated devices every parameter equals the plain load and has the sharding its logical
axes give, each tensor is read once; a MoE parameter's region reads only the experts it covers; with 2 processes x 4
devices (mesh expert=8) each process reads only the experts its devices hold (slow). Workers:
sharded_load_worker.py."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from jdistill.hf import from_pretrained
from jdistill.hf.weights import TensorMapping, _region_reader

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    return env


def _json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_sharded_load_equals_the_plain_load_on_8_devices():
    done = subprocess.run(
        [sys.executable, str(HERE / "sharded_load_worker.py"), "single"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = _json_line(done.stdout)
    assert set(results) == {"qwen3_moe", "qwen3_next_moe", "qwen3"}  # released / packed experts, dense
    for name, result in results.items():
        assert result["equal"] and result["sharded_as_wanted"], name
        assert result["job_equal"] and result["job_sharded"], name  # the job's teacher load (load_pretrained)
        assert result["most_reads_of_a_tensor"] == 1, name
        for shard, shape in zip(result["expert_shard"], result["expert_shape"], strict=True):
            assert shard == [shape[0] // 4, *shape[1:]], name  # mesh expert=4: two of the 8 experts per device


def test_a_region_of_a_moe_parameter_reads_only_its_experts():
    rng = np.random.default_rng(0)
    tensors = {f"e{e}": rng.normal(size=(3, 5)).astype(np.float32) for e in range(6)}  # HF [f, d], transposed
    group = [TensorMapping(f"e{e}", ("w",), transpose=True, expert=e) for e in range(6)]
    read = []
    region = _region_reader(group, (6, 5, 3), lambda name: read.append(name) or tensors[name])
    part = region((slice(2, 4), slice(None), slice(1, 3)))
    assert read == ["e2", "e3"]
    np.testing.assert_array_equal(part, np.stack([tensors["e2"].T[:, 1:3], tensors["e3"].T[:, 1:3]]))
    region((slice(2, 4), slice(None), slice(0, 1)))  # another device's columns of the same experts: no new read
    assert read == ["e2", "e3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_each_process_reads_only_the_experts_its_devices_hold(tmp_path):
    port = str(_free_port())
    logs = [(tmp_path / f"out{i}", tmp_path / f"err{i}") for i in range(2)]  # files: a full pipe would stall a worker
    processes = []
    for i, (out, err) in enumerate(logs):
        with out.open("w") as stdout, err.open("w") as stderr:
            command = [sys.executable, str(HERE / "sharded_load_worker.py"), "multi", str(i), port]
            processes.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=_env()))
    for process, (_, err) in zip(processes, logs, strict=True):
        assert process.wait(timeout=400) == 0, err.read_text()[-3000:]
    outputs = [(out.read_text(), None) for out, _ in logs]
    results = sorted((_json_line(out) for out, _ in outputs), key=lambda r: r["process"])
    assert [r["experts_here"] for r in results] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r["read_experts"] for r in results] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    plain = {
        "/".join(map(str, p)): v.get_value()
        for p, v in nnx.to_flat_state(nnx.state(from_pretrained(HERE / "fixtures" / "qwen3_moe"), nnx.Param))
    }
    for key in ("blocks/1/mlp/w_up", "blocks/2/mlp/router"):
        for result in results:
            np.testing.assert_array_equal(np.asarray(result[key], np.float32), np.asarray(plain[key]).ravel())

"""One process of the sharded-loading checks (run by test_sharded_load.py); prints one JSON line.

sharded_load_worker.py single             1 process x 8 CPU devices: every fixture loaded into its sharded
                                          layout (`from_pretrained(mesh=...)`, and a teacher through the job's
                                          `load_pretrained`) against the plain load
sharded_load_worker.py multi PID PORT     2 processes x 4 devices (gloo), mesh expert=8: which expert tensors
                                          this process read, and the gathered parameters
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections import Counter
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np
from flax import nnx

from jdistill.configs import ClusterConfig, MeshConfig
from jdistill.hf import checkpoint
from jdistill.models.config import ModelConfig
from jdistill.train import sharding
from jdistill.train.distributed import maybe_initialize

FIXTURES = Path(__file__).parent / "fixtures"
MESHES = {"qwen3_moe": MeshConfig(data=2, expert=4), "qwen3_next_moe": MeshConfig(data=2, expert=4)}
MESHES["qwen3"] = MeshConfig(fsdp=4, tensor=2)

READS: Counter = Counter()
_reader = checkpoint._tensor_reader


def _counting_reader(*args, **kwargs):
    read = _reader(*args, **kwargs)

    def counted(name):
        READS[name] += 1
        return read(name)

    return counted


checkpoint._tensor_reader = _counting_reader


def _flat(model) -> dict:
    return {tuple(path): v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def single() -> dict:
    jax.config.update("jax_num_cpu_devices", 8)
    from jdistill.train.restore import load_pretrained

    out = {}
    for name, mesh_config in MESHES.items():
        plain = _flat(checkpoint.from_pretrained(FIXTURES / name))
        READS.clear()
        mesh = sharding.make_mesh(mesh_config)
        model = checkpoint.from_pretrained(FIXTURES / name, mesh=mesh)
        wanted = checkpoint.model_shardings(model, mesh)
        loaded = _flat(model)
        reads = dict(READS)
        stage = types.SimpleNamespace(init_from=f"hf:{FIXTURES / name}", model=ModelConfig())
        job = load_pretrained(stage, mesh_config=mesh_config)
        job_params = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(job.params)}
        out[name] = {
            "equal": all(np.array_equal(np.asarray(loaded[p]), np.asarray(v)) for p, v in plain.items()),
            "sharded_as_wanted": all(loaded[p].sharding == wanted[p] for p in plain),
            "job_equal": all(np.array_equal(np.asarray(job_params[p]), np.asarray(v)) for p, v in plain.items()),
            "job_sharded": all(job_params[p].sharding == wanted[p] for p in plain),
            "most_reads_of_a_tensor": max(reads.values()),
            "tensors_read": len(reads),
            "expert_shard": [list(v.addressable_shards[0].data.shape) for p, v in loaded.items() if p[-1] == "w_up"],
            "expert_shape": [list(v.shape) for p, v in loaded.items() if p[-1] == "w_up"],
        }
    return out


def multi(process_id: int, port: str) -> dict:
    from jax.experimental import multihost_utils

    jax.config.update("jax_num_cpu_devices", 4)
    maybe_initialize(
        ClusterConfig(distributed="on", coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    )
    mesh = sharding.make_mesh(MeshConfig(expert=8))
    model = checkpoint.from_pretrained(FIXTURES / "qwen3_moe", mesh=mesh)
    local = sorted({d.id for d in jax.local_devices()})
    experts_here = sorted(
        {int(i) for i, device in enumerate(mesh.devices.reshape(-1)) if device.id in local}
    )  # mesh expert index of each local device = the expert it holds (8 experts over 8 devices)
    read_experts = sorted({int(name.split("experts.")[1].split(".")[0]) for name in READS if ".experts." in name})
    gathered = {
        "/".join(map(str, p)): np.asarray(multihost_utils.process_allgather(v, tiled=True)).ravel().tolist()
        for p, v in _flat(model).items()
        if p[-1] in ("w_up", "router")
    }
    return {"process": jax.process_index(), "experts_here": experts_here, "read_experts": read_experts, **gathered}


if __name__ == "__main__":
    if sys.argv[1] == "single":
        print(json.dumps(single()))
    else:
        result = multi(int(sys.argv[2]), sys.argv[3])
        print(json.dumps(result))
        jax.distributed.shutdown()

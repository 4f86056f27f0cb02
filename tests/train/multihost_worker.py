"""One process of the multi-host check (run by test_multihost.py).

    multihost_worker.py multi PROCESS_ID PORT CKPT_DIR   2 processes x 4 CPU devices, joined by
                                                          jax.distributed (gloo); 3 KD steps on mesh data=4,
                                                          fsdp=2; orbax checkpoint written by both processes
    multihost_worker.py single CKPT_DIR                  1 process x 8 devices: the same 3 steps, then restores
                                                          the 2-process checkpoint into its own sharded state

Each prints one JSON line (process 0 only in `multi`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).parent))

import jax
import numpy as np

from jdistill.configs import ClusterConfig, MeshConfig
from jdistill.train import sharding
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.distributed import maybe_initialize

MESH = MeshConfig(data=4, fsdp=2)


def local_rows(batch: dict) -> dict:
    """This process's rows of the global batch: processes own contiguous blocks of the batch axis."""
    count, index = jax.process_count(), jax.process_index()
    return {k: v[index * len(v) // count : (index + 1) * len(v) // count] for k, v in batch.items()}


def train(checkpoint_dir: Path | None):
    import sharded_checks

    step, state, teacher_params, batch_shardings, _ = sharded_checks.build(MESH)
    losses = []
    for batch in sharded_checks.batches():
        state, metrics = step(state, teacher_params, sharding.global_batch(local_rows(batch), batch_shardings))
        losses.append(float(metrics["loss"]))
    if checkpoint_dir is not None:
        checkpointer = Checkpointer(checkpoint_dir, keep=1)
        checkpointer.save(3, state, force=True)
        checkpointer.close()
    return state, losses


def gathered_params(state):
    from jax.experimental import multihost_utils

    leaves = [
        np.asarray(multihost_utils.process_allgather(x, tiled=True)).ravel() for x in jax.tree.leaves(state.params)
    ]
    return np.concatenate(leaves)


def main(argv):
    mode = argv[1]
    if mode == "multi":
        process_id, port, checkpoint_dir = int(argv[2]), argv[3], Path(argv[4])
        jax.config.update("jax_num_cpu_devices", 4)
        maybe_initialize(
            ClusterConfig(
                distributed="on", coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
            )
        )
        assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
        state, losses = train(checkpoint_dir)
        params = gathered_params(state)
        if jax.process_index() == 0:
            print(json.dumps({"losses": losses, "params": params.tolist(), "processes": jax.process_count()}))
        jax.distributed.shutdown()
        return
    checkpoint_dir = Path(argv[2])
    jax.config.update("jax_num_cpu_devices", 8)
    state, losses = train(None)
    import sharded_checks

    restored = Checkpointer(checkpoint_dir, keep=1).restore(3, state)
    print(
        json.dumps(
            {
                "losses": losses,
                "params": sharded_checks.flat_params(state).tolist(),
                "restored_params": sharded_checks.flat_params(restored).tolist(),
                "restored_step": int(restored.step),
                "processes": jax.process_count(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)

"""Expert-parallel KD step checks on 8 simulated CPU devices (run as a subprocess by test_moe_sharding.py; prints
JSON). A mixture-of-experts teacher (with a shared expert) distilled into a mixture-of-experts student (router
losses on), two steps from the same init and batches on each mesh: the losses, the updated parameters, the
per-device shard of an expert weight, and the compiled step's collectives."""

from __future__ import annotations

import functools
import json
import os
import re
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from jdistill.configs import MeshConfig
from jdistill.models import ModelConfig
from jdistill.nn import moe
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.train import sharding
from tests.train import sharded_checks

MOE = dict(kind="lm", d_model=32, num_heads=2, mlp_dim=64, vocab_size=64, max_seq_len=16, mlp="glu", activation="silu")
MOE |= dict(mlp_bias=False, num_experts=8, experts_per_token=2, moe_mlp_dim=32)
TEACHER = ModelConfig(num_layers=1, shared_expert_dim=16, **MOE)
STUDENT = ModelConfig(num_layers=1, **MOE)
MESHES = {
    "single": MeshConfig(data=1),
    "expert8": MeshConfig(data=1, expert=8),
    "data2_expert4": MeshConfig(data=2, expert=4),
    "fsdp2_tensor2_expert2": MeshConfig(data=1, fsdp=2, tensor=2, expert=2),
    "data2_expert4_ragged_dot": MeshConfig(data=2, expert=4),
}
# Meshes run with the layer's sorted dispatch forced to `jax.lax.ragged_dot` (the TPU / GPU path; on CPU JAX
# lowers it as masked dense products) instead of the blocked CPU form.
RAGGED_DOT = {"data2_expert4_ragged_dot"}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
EXPERT_WEIGHT = ("blocks", 0, "mlp", "w_up")


def batches(count=2):
    rng = np.random.default_rng(0)
    for _ in range(count):
        tokens = rng.integers(0, 64, (8, 17))
        yield {
            "inputs": tokens[:, :-1].astype(np.int32),
            "targets": tokens[:, 1:].astype(np.int32),
            "mask": rng.random((8, 16)) > 0.2,
        }


def run(mesh_config):
    recipe = KnowledgeDistillation(temperature=2.0, label_weight=0.5, router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    step, state, teacher_params, batch_shardings, mesh = sharded_checks.build(
        mesh_config, teacher=TEACHER, student=STUDENT, recipe=recipe, batches=batches
    )
    first = next(batches(1))
    hlo = step.lower(state, teacher_params, sharding.global_batch(first, batch_shardings)).compile().as_text()
    losses, balance = [], []
    for batch in batches():
        state, metrics = step(state, teacher_params, sharding.global_batch(batch, batch_shardings))
        losses.append(float(metrics["loss"]))
        balance.append(float(metrics["moe_load_balancing_loss"]))
    weight = state.params
    for key in EXPERT_WEIGHT:
        weight = weight[key]
    weight = weight.get_value()
    return {
        "losses": losses,
        "load_balancing": balance,
        "params": np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]).tolist(),
        "expert_weight_shape": list(weight.shape),
        "expert_weight_shard_shape": list(weight.addressable_shards[0].data.shape),
        "expert_weight_spec": str(weight.sharding.spec),
        "collectives": {name: len(re.findall(rf"\b{name}(-start)?\(", hlo)) for name in COLLECTIVES},
        # all-gathers whose result is a whole [experts, ...] weight: expert parallelism keeps each device's experts
        "expert_weight_gathers": len(
            re.findall(r"= f32\[" + ",".join(map(str, weight.shape)) + r"\][^ ]* all-gather(-start)?\(", hlo)
        ),
        "devices": int(np.prod(list(mesh.shape.values()))),
    }


def run_named(name: str) -> dict:
    if name not in RAGGED_DOT:
        return run(MESHES[name])
    shipped = moe.DISPATCH["ragged"]
    moe.DISPATCH["ragged"] = functools.partial(moe.moe_ragged, impl="ragged_dot")
    try:
        return run(MESHES[name])
    finally:
        moe.DISPATCH["ragged"] = shipped


if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", 8)
    names = sys.argv[1:] or list(MESHES)
    print(json.dumps({name: run_named(name) for name in names}))

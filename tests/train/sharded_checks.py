"""Sharded KD step checks on 8 simulated CPU devices (run as a subprocess by test_sharding.py; prints JSON).

For each mesh: three KD steps from the same init and batches, the losses, the updated parameters, the compiled
step's collectives and its per-device argument memory (memory analysis).
"""

from __future__ import annotations

import json
import os
import re
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.configs import MeshConfig, TrainConfig
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.train import sharding
from jdistill.train.optim import make_optimizer
from jdistill.train.state import TrainState
from jdistill.train.step import StepShardings, make_train_step

TEACHER = ModelConfig(kind="lm", num_layers=2, d_model=64, num_heads=4, mlp_dim=128, vocab_size=256, max_seq_len=32)
STUDENT = ModelConfig(kind="lm", num_layers=1, d_model=64, num_heads=4, mlp_dim=128, vocab_size=256, max_seq_len=32)
TRAIN = TrainConfig(steps=10, warmup_steps=1, learning_rate=3e-3, batch_size=8)
MESHES = {
    "single": MeshConfig(data=1),
    "data8": MeshConfig(data=8),
    "data4_fsdp2": MeshConfig(data=4, fsdp=2),
    "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
    "fsdp8": MeshConfig(data=1, fsdp=8),
}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def batches(count=3):
    rng = np.random.default_rng(0)
    for _ in range(count):
        tokens = rng.integers(0, 256, (8, 17))
        yield {
            "inputs": tokens[:, :-1].astype(np.int32),
            "targets": tokens[:, 1:].astype(np.int32),
            "mask": (rng.random((8, 16)) > 0.2),
        }


def build(mesh_config, *, teacher=TEACHER, student=STUDENT, recipe=None, batches=batches):
    """(jitted sharded step, sharded state, sharded teacher params, batch shardings, mesh) for a mesh: a KD step
    (temperature 2, label weight 0.5 unless `recipe` is given) of `student` from `teacher` on `batches()`."""
    teacher_graphdef, teacher_params = nnx.split(Transformer(teacher, rngs=nnx.Rngs(1)))
    graphdef, params = nnx.split(Transformer(student, rngs=nnx.Rngs(2)))
    optimizer = make_optimizer(TRAIN)
    recipe = recipe or KnowledgeDistillation(temperature=2.0, label_weight=0.5)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
    mesh = sharding.make_mesh(mesh_config)
    rules = sharding.resolve_rules(mesh_config.rules)
    state_shardings = sharding.state_shardings(state, mesh, rules)
    teacher_shardings = sharding.param_shardings(teacher_params, mesh, rules)
    first = next(batches(1))
    batch_shardings = sharding.batch_shardings(first, mesh, rules)
    shardings = StepShardings(state_shardings, teacher_shardings, batch_shardings, sharding.replicated(mesh), rules)
    step = make_train_step(graphdef, recipe, optimizer, seed=0, teacher_graphdef=teacher_graphdef, shardings=shardings)
    state = sharding.shard(state, state_shardings)
    teacher_params = sharding.shard(teacher_params, teacher_shardings)
    return step, state, teacher_params, batch_shardings, mesh


def flat_params(state):
    return np.concatenate([np.asarray(jax.device_get(x)).ravel() for x in jax.tree.leaves(state.params)])


def run(mesh_config):
    step, state, teacher_params, batch_shardings, mesh = build(mesh_config)
    first = next(batches(1))
    compiled = step.lower(state, teacher_params, sharding.global_batch(first, batch_shardings)).compile()
    hlo = compiled.as_text()
    memory = compiled.memory_analysis()
    losses = []
    for batch in batches():
        state, metrics = step(state, teacher_params, sharding.global_batch(batch, batch_shardings))
        losses.append(float(metrics["loss"]))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
    shard_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state.params))
    return {
        "losses": losses,
        "params": flat_params(state).tolist(),
        "collectives": {name: len(re.findall(rf"\b{name}(-start)?\(", hlo)) for name in COLLECTIVES},
        "argument_bytes": memory.argument_size_in_bytes,
        "param_bytes": param_bytes,
        "param_shard_bytes": shard_bytes,
        "devices": int(np.prod(list(mesh.shape.values()))),
    }


def activation_constraints(mesh_config):
    """The PartitionSpecs (as strings) of the sharding constraints in the traced step: the layers' activations."""
    step, state, teacher_params, batch_shardings, _ = build(mesh_config)
    jaxpr = step.trace(state, teacher_params, sharding.global_batch(next(batches(1)), batch_shardings)).jaxpr

    def eqns(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    yield from eqns(inner)

    return sorted(
        {str(eqn.params["sharding"].spec) for eqn in eqns(jaxpr.jaxpr) if eqn.primitive.name == "sharding_constraint"}
    )


# mesh.rules.batch reaches the layers through the step: the batch over `data` only, parameters still over fsdp
RULE_MESHES = {
    "data4_fsdp2": MESHES["data4_fsdp2"],
    "data4_fsdp2_batch_data": MeshConfig(data=4, fsdp=2, rules={"batch": "data"}),
}


if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", 8)
    names = sys.argv[1:] or list(MESHES)
    results = {name: run(MESHES[name]) for name in names}
    results["constraints"] = {name: activation_constraints(config) for name, config in RULE_MESHES.items()}
    print(json.dumps(results))

"""Ahead-of-time compilation of the real sharded distillation train step, on abstract shapes only.

This module is the compile *worker*: `jdistill.scale.compile` runs it in a fresh process (libtpu for a TPU
topology, or N simulated CPU devices for a GPU cluster), because the target platform must be chosen before JAX
initialises. It builds exactly what `jdistill train` runs for the recipe stage (`run_stage`): the student and
teacher as abstract NNX modules (`nnx.eval_shape`, no parameter is allocated), the recipe's initial state, the
AdamW state, the mesh and logical-axis shardings of `jdistill.train.sharding`, and
`jdistill.train.step.make_train_step`; then lowers and compiles it for the topology's devices.

    python -m jdistill.scale.aot '[{"config": PATH, "overrides": [...], "topology": NAME}, ...]'

prints one JSON line per job: per-device memory of the compiled executable, FLOPs per step, mesh shape.
"""

from __future__ import annotations

import json
import os
import sys
import time

if os.environ.get("JDISTILL_AOT_PLATFORM") == "tpu":  # before JAX initialises: libtpu without a TPU
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # any value: silences libtpu's host probe

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jdistill.scale.topologies import Topology, parse_topology  # noqa: E402

# What "auto" attention resolves to on the target (this process's own backend is CPU, or libtpu without TPUs).
TARGET_ATTENTION = {"tpu": "pallas_tpu", "gpu": "xla"}


def target_devices(topology: Topology) -> list:
    """The devices to compile for: libtpu's description of the TPU slice(s), or the simulated CPU devices."""
    if topology.platform == "tpu":
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip.chip_config,
            chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=topology.num_slices)
        return list(desc.devices)
    devices = jax.devices("cpu")
    if len(devices) < topology.num_chips:
        raise RuntimeError(f"{len(devices)} CPU devices, need {topology.num_chips} (set XLA_FLAGS="
                           f"--xla_force_host_platform_device_count={topology.num_chips})")
    return devices[:topology.num_chips]


def _for_target(model_config, platform: str):
    if model_config.attention_impl != "auto":
        return model_config
    return dataclasses.replace(model_config, attention_impl=TARGET_ATTENTION[platform])


def abstract_model(model_config):
    """(graphdef, abstract params): shapes and dtypes only, nothing allocated."""
    from jdistill.models import Transformer

    return nnx.split(nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0))))


def count(tree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def build_step(config, devices, platform: str):
    """(jitted train step, abstract (state, teacher_params, batch), mesh, parameter counts)."""
    from jdistill.models import Transformer
    from jdistill.recipes.base import SEPARATE_TEACHER_POLICIES
    from jdistill.recipes.registry import build_recipe
    from jdistill.train import sharding
    from jdistill.train.optim import make_optimizer
    from jdistill.train.state import TrainState
    from jdistill.train.step import StepShardings, make_train_step

    recipe = build_recipe(config.distill)
    student_config = _for_target(config.student.model, platform)
    teacher_config = _for_target(config.teacher.model, platform)
    separate_teacher = recipe.teacher_policy in SEPARATE_TEACHER_POLICIES
    optimizer = make_optimizer(config.student.train)

    def init():  # what run_stage builds, traced abstractly by nnx.eval_shape: nothing is allocated
        params = nnx.split(Transformer(student_config, rngs=nnx.Rngs(0)))[1]
        teacher = nnx.split(Transformer(teacher_config, rngs=nnx.Rngs(1)))[1] if separate_teacher else None
        params, recipe_state = recipe.init(params, teacher, jax.random.key(0))
        return params, recipe_state, optimizer.init(params), teacher

    params, recipe_state, opt_state, teacher_params = nnx.eval_shape(init)
    graphdef = abstract_model(student_config)[0]
    teacher_graphdef = abstract_model(teacher_config)[0] if separate_teacher else None
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                       recipe_state=recipe_state)
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = sharding.resolve_rules(config.mesh.rules)
    batch_shape = (config.student.train.batch_size, config.data.seq_len)
    batch = {"inputs": jax.ShapeDtypeStruct(batch_shape, jnp.int32),
             "targets": jax.ShapeDtypeStruct(batch_shape, jnp.int32),
             "mask": jax.ShapeDtypeStruct(batch_shape, jnp.bool_)}
    teacher_shardings = None if teacher_params is None else sharding.param_shardings(teacher_params, mesh, rules)
    shardings = StepShardings(sharding.state_shardings(state, mesh, rules), teacher_shardings,
                              sharding.batch_shardings(batch, mesh, rules), sharding.replicated(mesh), rules)
    step = make_train_step(graphdef, recipe, optimizer, seed=config.seed, teacher_graphdef=teacher_graphdef,
                           grad_accum_steps=config.student.train.grad_accum_steps, shardings=shardings)
    counts = {"student_params": count(params), "teacher_params": count(teacher_params) if teacher_params else 0}
    return step, (state, teacher_params, batch), mesh, counts


def compile_report(config, topology: Topology) -> dict:
    """Compile the config's train step for `topology`; per-device memory and FLOPs of the executable."""
    started = time.perf_counter()
    devices = target_devices(topology)
    step, args, mesh, counts = build_step(config, devices, topology.platform)
    compiled = step.lower(*args).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    figures = {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "code_bytes": int(memory.generated_code_size_in_bytes),
    }
    # Donated state: outputs that alias arguments occupy the same buffers.
    figures["total_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
                              + figures["temp_bytes"] + figures["code_bytes"])
    return dict(figures, **counts, flops_per_device=float(cost.get("flops", 0.0)),
                bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0)),
                mesh=dict(mesh.shape), devices=len(devices), platform=devices[0].platform,
                device_kind=devices[0].device_kind, compile_seconds=time.perf_counter() - started)


def main(argv: list[str]) -> int:
    from jdistill.configs import load_config

    jobs = json.loads(argv[0])
    for job in jobs:
        config = load_config(job["config"], job.get("overrides", []))
        topology = parse_topology(job["topology"], job.get("num_slices", 1))
        try:
            report = compile_report(config, topology)
        except Exception as error:  # reported per job; the parent turns it into a one-line error
            report = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:400]}"}
        print(json.dumps(dict(report, label=job.get("label", job["config"]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

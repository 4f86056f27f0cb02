"""Ahead-of-time compilation of the real sharded distillation train step, on abstract shapes only.

This module is the compile *worker*: `jdistill.scale.compile` runs it in a fresh process (libtpu for a TPU
topology, or N simulated CPU devices for a GPU cluster), because the target platform must be chosen before JAX
initialises. It builds exactly what `jdistill train` runs for the recipe stage (`run_stage`): the student and
teacher as abstract NNX modules, the bound recipe's initial state, the AdamW state, the mesh, the shardings and
the step, all from `jdistill.train.stage.build_stage` (the function `run_stage` trains with) in its abstract mode
(nothing is allocated), for the abstract batch of the config's input pipeline
(`jdistill.train.batch_spec.abstract_batch`); then lowers and compiles it for the topology's devices.

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

import dataclasses

import jax

from jdistill.io import strict_json
from jdistill.scale.topologies import Topology, parse_topology

# What "auto" attention resolves to on the target (this process's own backend is CPU, or libtpu without TPUs).
TARGET_ATTENTION = {"tpu": "pallas_tpu", "gpu": "xla"}


def target_devices(topology: Topology) -> list:
    """The devices to compile for: libtpu's description of the TPU slice(s), or the simulated CPU devices."""
    if topology.platform == "tpu":
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology.topology_name,
            chip_config_name=topology.chip.chip_config,
            chips_per_host_bounds=topology.chips_per_host_bounds,
            num_slices=topology.num_slices,
        )
        return list(desc.devices)
    devices = jax.devices("cpu")
    if len(devices) < topology.num_chips:
        raise RuntimeError(
            f"{len(devices)} CPU devices, need {topology.num_chips} (set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={topology.num_chips})"
        )
    return devices[: topology.num_chips]


def _for_target(model_config, platform: str):
    if model_config.attention_impl != "auto":
        return model_config
    return dataclasses.replace(model_config, attention_impl=TARGET_ATTENTION[platform])


def count(tree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def compile_facts(config):
    """The recipe stage's RunFacts: the training split's size when its data is readable here, else (data on a
    cluster's storage) one epoch = the whole run, `steps * batch_size` examples (per-example recipe buffers are
    then sized for that)."""
    from jdistill.errors import UserError
    from jdistill.train.stage import stage_facts

    try:
        return stage_facts(config.student, config.data)
    except (UserError, OSError):
        train = config.student.train
        return stage_facts(config.student, config.data, num_examples=train.steps * train.batch_size)


def build_step(config, devices, platform: str):
    """(jitted train step, abstract (state, teacher_params, batch), mesh, parameter counts) of the config's recipe
    stage: `jdistill.train.stage.build_stage` with `abstract=True`, as `run_stage` builds it for training."""
    from jdistill.train.batch_spec import abstract_batch
    from jdistill.train.job import STUDENT_INIT, checked_recipe
    from jdistill.train.loop import stage_key
    from jdistill.train.stage import abstract_teacher, build_stage

    recipe = checked_recipe(config)
    student = dataclasses.replace(config.student, model=_for_target(config.student.model, platform))
    teacher_graphdef = teacher_params = None
    if recipe.policy.separate_teacher:
        teacher_graphdef, teacher_params = abstract_teacher(_for_target(config.teacher.model, platform))
    batch = abstract_batch(config.data, student, recipe)
    stage = build_stage(
        student,
        recipe=recipe,
        facts=compile_facts(config),
        batch=batch,
        seed=config.seed,
        init_key=stage_key(config.seed, STUDENT_INIT),
        mesh_config=config.mesh,
        devices=devices,
        teacher_graphdef=teacher_graphdef,
        teacher_params=teacher_params,
        abstract=True,
    )
    counts = {
        "student_params": stage.params_count,
        "teacher_params": count(teacher_params) if teacher_params is not None else 0,
    }
    return stage.train_step, stage.step_args(batch), stage.mesh, counts


def input_avals(args) -> list:
    """[path, shape, dtype] of every leaf of the step's arguments (state, teacher, batch), in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(args)[0]
    return [[jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves]


def compile_report(config, topology: Topology) -> dict:
    """Compile the config's train step for `topology`; per-device memory and FLOPs of the executable."""
    started = time.perf_counter()
    devices = target_devices(topology)
    step, args, mesh, counts = build_step(config, devices, topology.platform)
    compiled = step.lower(*args).compile()
    avals = {"input_avals": input_avals(args)}
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
    figures["total_bytes"] = (
        figures["argument_bytes"]
        + figures["output_bytes"]
        - figures["alias_bytes"]
        + figures["temp_bytes"]
        + figures["code_bytes"]
    )
    return dict(
        figures,
        **counts,
        **avals,
        flops_per_device=float(cost.get("flops", 0.0)),
        bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0)),
        mesh=dict(mesh.shape),
        devices=len(devices),
        platform=devices[0].platform,
        device_kind=devices[0].device_kind,
        compile_seconds=time.perf_counter() - started,
    )


def main(argv: list[str]) -> int:
    from jdistill.configs import load_config
    from jdistill.train.prune_stage import resolve_prune

    jobs = json.loads(argv[0])
    for job in jobs:
        config = resolve_prune(load_config(job["config"], job.get("overrides", [])))  # the pruned student's shape
        topology = parse_topology(job["topology"], job.get("num_slices", 1))
        try:
            report = compile_report(config, topology)
        except Exception as error:  # reported per job; the parent turns it into a one-line error
            report = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:400]}"}
        print(strict_json.dumps(dict(report, label=job.get("label", job["config"]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`jdistill compile`: compile the config's sharded train step ahead of time and report what one chip needs.

The compile runs in a subprocess (`jdistill.scale.aot`): for a TPU topology through libtpu on this host (no TPU
needed: libtpu describes the slice and compiles for it). A GPU cluster cannot be compiled for without GPUs, so
its step is compiled twice: on as many simulated CPU devices (XLA:CPU), and, when libtpu is installed, for a
TPU v5p slice with as many chips and the same mesh (`proxy_topology`). XLA:CPU overstates badly (it keeps
several layers' float32 attention-score buffers and float32 copies of bf16 work live at once: several-fold
the TPU figure at full depth, docs/scaling_out.md), so the fit is decided with the TPU compile of the same
sharded program, and both figures and their ratio are printed. Per chip: arguments (parameters, optimizer state,
teacher, batch), outputs,
temporaries (activations, gradients, logits chunks), total against the chip's HBM. FLOPs per step: XLA's
cost analysis of the compiled program (it counts a loop body once: gradient accumulation and the chunked
vocabulary loss are loops), and the model FLOPs from the architecture,

    train FLOPs / token = (6 + 2 * full_remat) * N_student + 2 * N_teacher + attention terms,

(N: matmul parameters incl. the head; attention 2 * 2 * seq * heads * head_dim per layer and forward pass),
from which the step time at 100 % and 50 % MFU follows: total FLOPs / (chips * peak bf16 FLOP/s * MFU).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from jdistill.errors import ConfigError, UserError
from jdistill.io import strict_json
from jdistill.scale.topologies import GiB, Topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]


class CompileError(UserError):
    """The step did not compile, or does not fit in the chips' memory."""


def resolve_topology(config, name: str | None = None) -> Topology:
    name = name or config.cluster.topology
    if not name:
        raise ConfigError("cluster.topology: not set; give one in the config or with --topology (e.g. v5e-16)")
    return parse_topology(name, config.cluster.num_slices)


def check_mesh(config, topology: Topology) -> None:
    """The mesh must cover every chip (before spending minutes compiling on a subset)."""
    mesh = config.mesh
    if mesh.dcn_data != topology.num_slices:
        raise ConfigError(
            f"mesh.dcn_data: {mesh.dcn_data}, but the topology has {topology.num_slices} slice(s) "
            "(cluster.num_slices); they must match"
        )
    devices = mesh.data * mesh.fsdp * mesh.tensor * mesh.expert * mesh.dcn_data
    if mesh.data != -1 and devices != topology.num_chips:
        raise ConfigError(
            f"mesh: data*fsdp*tensor*expert*dcn_data = {devices}, but {topology.describe()} has "
            f"{topology.num_chips} chips"
        )


def proxy_topology(topology: Topology) -> Topology | None:
    """For a GPU cluster: the TPU v5p slice with as many chips, to compile the same sharded step for with a
    production accelerator compiler (fused bf16 kernels, a memory-aware schedule) instead of XLA:CPU. None for
    TPU topologies, without libtpu, or when no standard v5p slice has that many chips."""
    if topology.platform != "gpu" or importlib.util.find_spec("libtpu") is None:
        return None
    try:
        return parse_topology(f"v5p-{2 * topology.num_chips}", topology.num_slices)
    except ConfigError:
        return None


def run_aot(jobs: list[dict], topology: Topology, timeout: float = 3600) -> list[dict]:
    """Compile `jobs` ({"config", "overrides", "topology"}) in one subprocess for `topology`'s platform."""
    env = {key: value for key, value in os.environ.items() if key not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if topology.platform == "tpu":
        env["JDISTILL_AOT_PLATFORM"] = "tpu"
    else:
        env["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={topology.num_chips}".strip()
    done = subprocess.run(
        [sys.executable, "-m", "jdistill.scale.aot", json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(reports) != len(jobs):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompileError(f"the compile worker stopped (exit {done.returncode}): {tail[:300]}")
    return reports


def _model_matmul_params(model) -> tuple[float, int]:
    """(matmul parameters per layer, head parameters) of an attention LM / classifier config. A mixture-of-experts
    block counts its ACTIVE parameters per token: the router, top-k experts and the shared expert with its gate;
    the per-layer figure is the mean over the blocks (`dense_layers` / `moe_every` keep some blocks dense)."""
    head_dim, heads, kv = model.resolved_head_dim, model.num_heads, model.resolved_kv_heads
    attention = model.d_model * head_dim * (2 * heads + 2 * kv)
    attention += model.d_model * heads * {"none": 0, "headwise": 1, "elementwise": head_dim}[model.gate]
    mlp = model.d_model * model.mlp_dim * (3 if model.mlp == "glu" else 2)
    if model.num_moe_layers:
        active = model.experts_per_token * model.resolved_moe_mlp_dim + model.shared_expert_dim
        routed = model.d_model * (3 * active + model.num_experts + (1 if model.shared_expert_dim else 0))
        mlp = (mlp * (model.num_layers - model.num_moe_layers) + routed * model.num_moe_layers) / model.num_layers
    outputs = model.vocab_size if model.kind == "lm" else model.num_classes
    return attention + mlp, model.d_model * outputs


def forward_flops_per_token(model, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token: 2 * N plus attention scores and values (full, not causal:
    the XLA reference computes the whole square)."""
    per_layer, head = _model_matmul_params(model)
    attention = 4 * seq_len * model.num_heads * model.resolved_head_dim
    return model.num_layers * (2 * per_layer + attention) + 2 * head


def model_flops_per_step(config, separate_teacher: bool = True) -> float:
    """Student forward + backward (+ one more forward of the blocks under remat) and teacher forward."""
    tokens = config.student.train.batch_size * config.data.seq_len
    student = config.student.model
    per_token = 3 * forward_flops_per_token(student, config.data.seq_len)
    if student.remat == "full":  # the backward pass runs every block's forward again ("dots" keeps matmuls)
        per_token += forward_flops_per_token(student, config.data.seq_len) - 2 * _model_matmul_params(student)[1]
    if separate_teacher:
        per_token += forward_flops_per_token(config.teacher.model, config.data.seq_len)
    return float(per_token * tokens)


def summarize(report: dict, config, topology: Topology) -> dict:
    """Per-chip memory against HBM, FLOPs and MFU-bound step times."""
    mesh_devices = math.prod(report["mesh"].values())
    if mesh_devices != topology.num_chips:
        raise ConfigError(
            f"mesh: data*fsdp*tensor*expert*dcn_data = {mesh_devices}, but {topology.describe()} has "
            f"{topology.num_chips} chips"
        )
    hbm = topology.chip.hbm_bytes
    flops = model_flops_per_step(config, report.get("teacher_params", 0) > 0)
    per_chip = flops / topology.num_chips
    peak = topology.chip.peak_bf16_flops
    return dict(
        report,
        topology=topology.describe(),
        num_chips=topology.num_chips,
        hbm_bytes=hbm,
        fits=report["total_bytes"] <= hbm,
        model_flops_per_step=flops,
        model_flops_per_chip=per_chip,
        step_seconds_at_100_mfu=per_chip / peak,
        step_seconds_at_50_mfu=per_chip / (0.5 * peak),
        tokens_per_step=config.student.train.batch_size * config.data.seq_len,
        estimate=topology.platform != "tpu",
        teacher_layers=config.teacher.model.num_layers,
        student_layers=config.student.model.num_layers,
    )


def format_summary(summary: dict, depth_note: str = "") -> str:
    gib = lambda key: f"{summary[key] / GiB:8.2f} GiB"
    kind = (
        "simulated CPU devices: an ESTIMATE of the per-GPU program"
        if summary["estimate"]
        else f"{summary['device_kind']} via libtpu"
    )
    mesh = " x ".join(f"{axis} {size}" for axis, size in summary["mesh"].items())
    lines = [
        f"{summary['topology']}: {summary['num_chips']} chips, mesh {mesh} ({kind}); "
        f"compiled in {summary['compile_seconds']:.0f} s",
        f"  parameters: student {summary['student_params'] / 1e9:.3f} B, teacher "
        f"{summary['teacher_params'] / 1e9:.3f} B (layers: teacher {summary['teacher_layers']}, student "
        f"{summary['student_layers']}){depth_note}",
        "  memory per chip:",
        f"    arguments   {gib('argument_bytes')}  (parameters, optimizer state, teacher, batch)",
        f"    outputs     {gib('output_bytes')}  ({summary['alias_bytes'] / GiB:.2f} GiB aliased to donated arguments)",
        f"    temporaries {gib('temp_bytes')}",
        f"    code        {gib('code_bytes')}",
        f"    total       {gib('total_bytes')}  of {summary['hbm_bytes'] / GiB:.0f} GiB HBM "
        f"({100 * summary['total_bytes'] / summary['hbm_bytes']:.0f} %)",
        f"  FLOPs per step: model {summary['model_flops_per_step']:.3e} ({summary['model_flops_per_chip']:.3e}"
        f" per chip); XLA cost analysis {summary['flops_per_device']:.3e} per chip (loop bodies counted once)",
        f"  step time ({summary['tokens_per_step']} tokens): >= {summary['step_seconds_at_100_mfu']:.3f} s at "
        f"100 % MFU, {summary['step_seconds_at_50_mfu']:.3f} s at 50 % MFU",
    ]
    if summary["estimate"]:
        lines += _gpu_lines(summary)
    return "\n".join(lines)


def _gpu_lines(summary: dict) -> list[str]:
    """How far to trust the XLA:CPU figure, and the TPU compile of the same step the fit is decided with."""
    check = summary.get("tpu_check")
    if check is None:
        return [
            "  XLA:CPU figure only (libtpu is not installed): it overstates a GPU's needs "
            "several-fold (docs/scaling_out.md); not decisive"
        ]
    if "error" in check:
        return [
            f"  same step for {check['topology']} (libtpu) did not compile: {check['error'][:200]}",
            "  XLA:CPU figure only: it overstates a GPU's needs several-fold (docs/scaling_out.md); not decisive",
        ]
    hbm = summary["hbm_bytes"]
    verdict = "fits" if summary["fits"] else "does NOT fit"
    return [
        f"  same step compiled for {check['topology']} (libtpu, same mesh): {check['total_bytes'] / GiB:.2f} "
        f"GiB per chip (arguments {check['argument_bytes'] / GiB:.2f}, temporaries "
        f"{check['temp_bytes'] / GiB:.2f}); XLA:CPU / TPU = {summary['cpu_over_tpu']:.2f}",
        f"  decided with the TPU figure: {verdict} in {hbm / GiB:.0f} GiB "
        f"({100 * check['total_bytes'] / hbm:.0f} %). XLA:CPU keeps several layers' float32 attention scores and "
        "float32 copies of bf16 work live at once, a GPU's compiler (like the TPU's) fuses and schedules them "
        "away; JAX preallocates 75 % of GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION)",
    ]


def _depth_note(config, base) -> str:
    reduced = [
        (name, getattr(config, name).model.num_layers, getattr(base, name).model.num_layers)
        for name in ("teacher", "student")
    ]
    reduced = [(n, now, was) for n, now, was in reduced if now != was]
    if not reduced:
        return ""
    parts = ", ".join(f"{n} {was} -> {now}" for n, now, was in reduced)
    return (
        f"\n  NOTE: depth overridden ({parts}); memory and FLOPs are those of the shallower program, "
        "not of the job: compile at full depth to decide whether it fits."
    )


def compile_config(path: str, overrides=(), topology_name: str | None = None) -> dict:
    """Compile one config (path or preset) and return its summary (see `summarize`)."""
    from jdistill.configs import load_config
    from jdistill.data.corpus_tokenizer import with_corpus_tokenizer
    from jdistill.extras import require
    from jdistill.train.job import checked_recipe
    from jdistill.train.prune_stage import resolve_prune

    config = resolve_prune(with_corpus_tokenizer(load_config(path, list(overrides))))
    checked_recipe(config)  # the recipe's option and compatibility errors, before minutes of compiling
    topology = resolve_topology(config, topology_name)
    check_mesh(config, topology)
    if topology.platform == "tpu":
        require("libtpu", "tpu", f"compiling for {topology.describe()}")
    report = run_aot(
        [
            {
                "config": str(path),
                "overrides": list(overrides),
                "topology": topology.name,
                "num_slices": topology.num_slices,
            }
        ],
        topology,
    )[0]
    if "error" in report:
        raise CompileError(f"{path}: the train step did not compile for {topology.describe()}: {report['error']}")
    summary = summarize(report, config, topology)
    proxy = proxy_topology(topology)
    if proxy is not None:
        tpu = run_aot(
            [
                {
                    "config": str(path),
                    "overrides": list(overrides),
                    "topology": proxy.name,
                    "num_slices": proxy.num_slices,
                }
            ],
            proxy,
        )[0]
        summary = with_tpu_check(summary, tpu, proxy)
    return summary


def with_tpu_check(summary: dict, tpu: dict, proxy: Topology) -> dict:
    """The GPU estimate decided with the TPU compile of the same step: `fits` and `decision_bytes` from it,
    `cpu_over_tpu` the factor by which XLA:CPU overstates."""
    check = {"topology": proxy.describe()}
    if "error" in tpu:
        return dict(summary, tpu_check=dict(check, error=tpu["error"]))
    check.update({key: tpu[key] for key in ("argument_bytes", "temp_bytes", "total_bytes", "compile_seconds")})
    return dict(
        summary,
        tpu_check=check,
        decision_bytes=tpu["total_bytes"],
        fits=tpu["total_bytes"] <= summary["hbm_bytes"],
        cpu_over_tpu=summary["total_bytes"] / max(tpu["total_bytes"], 1),
    )


MEMORY_KEYS = (
    "argument_bytes",
    "output_bytes",
    "alias_bytes",
    "temp_bytes",
    "code_bytes",
    "total_bytes",
    "student_params",
    "teacher_params",
    "flops_per_device",
    "bytes_accessed_per_device",
)


def extrapolate(shallow: dict, deeper: dict, layers: int, teacher_layers: int, student_layers: int) -> dict:
    """Linear in depth from compiles at 1 and 2 layers (teacher and student together): value(1) + (layers - 1) *
    (value(2) - value(1)), `layers` the deeper model's depth. A ROUGH EARLY ESTIMATE, neither an upper nor a lower
    bound: the compiler schedules a deep program differently from a 2-layer one (against full-depth compiles it
    was 43 % low for v4-8 and 6-8 % high for v4-32 and 2 x v5e-256, docs/scaling_out.md). Parameter counts are
    extrapolated per model, exactly."""
    out = dict(shallow, compile_seconds=shallow["compile_seconds"] + deeper["compile_seconds"])
    depths = {"teacher_params": teacher_layers, "student_params": student_layers}
    for key in MEMORY_KEYS:
        out[key] = type(shallow[key])(shallow[key] + (depths.get(key, layers) - 1) * (deeper[key] - shallow[key]))
    out["per_layer_bytes"] = deeper["total_bytes"] - shallow["total_bytes"]
    return out


def compile_extrapolated(path: str, overrides=(), topology_name: str | None = None) -> dict:
    """Compile at 1 and 2 layers (width and sharding kept) and extrapolate to the config's depth."""
    from jdistill.configs import load_config
    from jdistill.data.corpus_tokenizer import with_corpus_tokenizer
    from jdistill.train.job import checked_recipe
    from jdistill.train.prune_stage import resolve_prune

    config = resolve_prune(with_corpus_tokenizer(load_config(path, list(overrides))))
    checked_recipe(config)  # the recipe's option and compatibility errors, before minutes of compiling
    topology = resolve_topology(config, topology_name)
    check_mesh(config, topology)
    depths = config.teacher.model.num_layers, config.student.model.num_layers
    jobs = [
        {
            "config": str(path),
            "overrides": [*overrides, f"teacher.model.num_layers={depth}", f"student.model.num_layers={depth}"],
            "topology": topology.name,
            "num_slices": topology.num_slices,
        }
        for depth in (1, 2)
    ]
    reports = run_aot(jobs, topology)
    for report in reports:
        if "error" in report:
            raise CompileError(f"{path}: the train step did not compile for {topology.describe()}: {report['error']}")
    summary = summarize(extrapolate(reports[0], reports[1], max(depths), *depths), config, topology)
    return dict(summary, extrapolated_from=(1, 2))


def cmd_compile(args) -> int:
    from jdistill.configs import load_config

    extrapolated = getattr(args, "extrapolate", False)
    if extrapolated:
        summary = compile_extrapolated(args.config, args.overrides, args.topology)
        note = (
            "\n  NOTE: EXTRAPOLATED to this depth from compiles at 1 and 2 layers "
            f"({summary['per_layer_bytes'] / GiB:.2f} GiB per layer pair, linear): a rough early estimate, "
            "not a bound (off by -43 % to +8 % on the TPU configs); compile at full depth to decide"
        )
    else:
        summary = compile_config(args.config, args.overrides, args.topology)
        note = _depth_note(load_config(args.config, list(args.overrides)), load_config(args.config))
    print(format_summary(summary, note))
    if args.json:
        Path(args.json).write_text(strict_json.dumps(summary, indent=2) + "\n")
    needed = summary.get("decision_bytes", summary["total_bytes"])
    if summary["fits"]:
        return 0
    if extrapolated or (summary["estimate"] and "decision_bytes" not in summary):
        print(
            f"WARNING: the {'extrapolation' if extrapolated else 'XLA:CPU estimate'} ({needed / GiB:.1f} GiB) "
            f"exceeds the {summary['hbm_bytes'] / GiB:.0f} GiB HBM; it is not decisive "
            f"({'compile at full depth' if extrapolated else 'install libtpu for the TPU check, or try a GPU'})"
        )
        return 0
    raise CompileError(
        f"{args.config}: needs {needed / GiB:.2f} GiB per chip, more than the "
        f"{summary['hbm_bytes'] / GiB:.0f} GiB HBM of {summary['topology']}"
        + (" (decided with the TPU compile of the same step)" if summary["estimate"] else "")
    )

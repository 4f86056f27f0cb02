"""The `jdistill` command line.

    jdistill --version
    jdistill train [--config NAME|PATH] [--run-dir DIR] [--resume] [key.sub=value ...]
    jdistill info
    jdistill analyze head-gates --run-dir DIR [--stage STAGE]
    jdistill recipes
    jdistill generate --checkpoint RUN_DIR/STAGE|hf:DIR --prompt TEXT [--max-new-tokens N] [--temperature T] ...
    jdistill cache-teacher --config NAME|PATH [--out DIR] [--top-k K] [--split train] [key.sub=value ...]
    jdistill compile --config NAME|PATH [--topology NAME] [--extrapolate] [key.sub=value ...]
    jdistill launch --config NAME|PATH [--dry-run] [key.sub=value ...]
    jdistill prune --teacher hf:DIR --layers N --method every_other|first|block_influence --out DIR
    jdistill export --run-dir RUN --stage NAME --out DIR
    jdistill bench attention [--seq 1024,8192] [--head-dim 128] [--causal yes|no|both] [--json PATH]
    jdistill bench train-step [--steps N] [--json PATH] [--no-torch] [--profile DIR]
    jdistill bench llm-kd [--steps N] [--json PATH]
    jdistill bench early-exit --checkpoint RUN/STAGE [--exits 2,4] [--draft-lens 3,5] [--json PATH]
    jdistill bench moe [--tokens 512,2048,8192] [--json PATH]

User errors (config, data, run directory) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
import sys
from pathlib import Path

from jdistill.bench import add_attention_arguments, run_attention
from jdistill.bench.early_exit_cli import register as register_early_exit
from jdistill.bench.llm_kd_cli import register as register_llm_kd
from jdistill.errors import Preempted, RunDirError, UserError
from jdistill.hf.cli_args import add_export_arguments, add_prune_arguments


def _select_platforms() -> None:
    """Off a TPU host, keep JAX from probing for TPUs: an installed libtpu (the test extra ships it for ahead-of-time
    TPU compilation) otherwise logs initialisation errors to stderr in every process. JAX_PLATFORMS wins if set."""
    if "JAX_PLATFORMS" in os.environ:
        return
    on_tpu_host = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or "TPU_ACCELERATOR_TYPE" in os.environ
    if on_tpu_host:
        return
    has_cuda = any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if has_cuda else "cpu"


def _quiet_libraries() -> None:
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def _load_for_train(args):
    from jdistill.configs import load_config, to_dict
    from jdistill.train.rundir import local_config

    if not args.resume:
        return load_config(args.config or "default", args.overrides)
    saved = local_config(args.run_dir)  # a gs:// run's config.yaml is read from a local copy
    if not saved.is_file():
        raise RunDirError(f"{args.run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    config = load_config(str(saved), args.overrides)
    before, after = to_dict(load_config(str(saved))), to_dict(config)
    before.pop("run"), after.pop("run")
    if before != after:
        raise RunDirError(f"{saved}: --resume must keep the run's config; only run.* may be overridden")
    return config


def _check_run_dir_arg(run_dir: str) -> None:
    """`--run-dir` is a folder, or a path whose nearest existing ancestor is one: a file there is one line."""
    path = Path(run_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file, not a folder" if folder == path else f"not writable ({folder} is a file)"
                raise RunDirError(f"--run-dir {run_dir}: {where}; pass a folder (a new one, or a run to --resume)")
            return


def cmd_train(args) -> int:
    from jdistill.eval.report import summary_table
    from jdistill.train import run_teacher_student
    from jdistill.train.rundir import default_run_dir

    if args.resume and args.run_dir is None:
        raise RunDirError("--resume needs --run-dir DIR (the run to continue)")
    if args.resume and args.config:
        raise RunDirError("--resume reads the run's own config.yaml; drop --config")
    if args.run_dir is not None:
        _check_run_dir_arg(args.run_dir)
    config = _load_for_train(args)
    from jdistill.train.distributed import maybe_initialize

    if maybe_initialize(config.cluster) and args.run_dir is None:
        raise RunDirError("a multi-host run needs --run-dir DIR (the same shared folder on every host)")
    run_dir = args.run_dir or default_run_dir()  # a local folder or a gs:// URL: never Path() it
    import jax

    from jdistill.io import fs

    local = not fs.is_remote(run_dir)
    created = local and not args.resume and not Path(run_dir).exists() and jax.process_index() == 0
    try:
        summary = run_teacher_student(config, run_dir, resume=args.resume)
    except UserError:
        if created:  # a job that failed before its first checkpoint leaves no folder blocking the next attempt
            from jdistill.train.unstarted import remove_unstarted

            remove_unstarted(run_dir)
        raise
    if jax.process_index() != 0:
        return 0
    print()
    print(summary_table(summary))
    print(
        f"\nwall time {summary['wall_seconds']:.1f} s; wrote {run_dir}/summary.json, learning_curves.png, "
        "metrics.jsonl, events/ (TensorBoard), checkpoints per stage"
    )
    return 0


def cmd_recipes(args) -> int:
    from jdistill.configs import load_config, preset_names
    from jdistill.recipes.registry import recipe_table

    presets: dict[str, list[str]] = {}
    for preset in preset_names():
        presets.setdefault(load_config(preset).distill.recipe, []).append(preset)
    rows = recipe_table()
    width = max(len(name) for name, _, _ in rows)
    policy_width = max(len(policy) for _, policy, _ in rows)
    for name, policy, description in rows:
        preset = f"  [--config {'|'.join(presets[name])}]" if name in presets else ""
        print(f"{name.ljust(width)}  {policy.ljust(policy_width)}  {description}{preset}")
    return 0


def _lazy(module: str, function: str):
    """A command whose implementation is imported only when it runs (keeps `jdistill --help` fast)."""

    def run(args):
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return run


def cmd_info(args) -> int:
    import jax

    import jdistill
    from jdistill.configs import preset_names
    from jdistill.data import resolve_data_dir

    print(f"jdistill {jdistill.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
    print(
        f"devices: {jax.device_count()} ({', '.join(sorted({d.device_kind for d in jax.devices()}))}), "
        f"processes: {jax.process_count()}"
    )
    print(f"presets: {', '.join(preset_names())}")
    print(f"data dir: {resolve_data_dir(None)}")
    return 0


def cmd_analyze_head_gates(args) -> int:
    from jdistill.eval.head_gating import analyze_head_gates, choose_stage, format_table, plot_head_gates
    from jdistill.train import inputs
    from jdistill.train.restore import load_stage, stage_config_for

    if not (Path(args.run_dir) / "config.yaml").is_file():
        raise RunDirError(f"{args.run_dir}: not a run directory (no config.yaml)")
    args.stage = choose_stage(args.run_dir, args.stage)
    model, config = load_stage(args.run_dir, args.stage)
    print(f"jdistill: analysing stage {args.stage} of {args.run_dir}", file=sys.stderr)
    stage = stage_config_for(config, args.stage)
    dataset = inputs.train_dataset(config.data, stage.model, stage.train, config.seed)
    batches = [dataset[index] for index in range(args.batches)]
    result = analyze_head_gates(model, batches, lam=args.lam, steps=args.steps, progress=config.run.progress)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"head_gates_{args.stage}.png"
    plot_head_gates(result, out)
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jdistill import __version__

    parser = argparse.ArgumentParser(prog="jdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jdistill {__version__}")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="run a teacher -> student distillation job (default: digits)")
    train.add_argument("--config", help="preset name (see `jdistill info`) or path to a YAML file")
    train.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    train.set_defaults(func=cmd_train)
    info = sub.add_parser("info", help="versions, devices, presets, data directory")
    info.set_defaults(func=cmd_info)
    recipes = sub.add_parser("recipes", help="list every distillation recipe (name, teacher policy, what it does)")
    recipes.set_defaults(func=cmd_recipes)
    importlib.import_module("jdistill.commands.generate").register(sub)
    importlib.import_module("jdistill.commands.sample").register(sub)
    importlib.import_module("jdistill.commands.repro").register(sub)
    cache = sub.add_parser("cache-teacher", help="run a teacher over a dataset once; store top-k log-probs per token")
    cache.add_argument("--config", help="preset name or YAML path (its teacher is trained unless init_from is set)")
    cache.add_argument("--run-dir", help="a run whose trained teacher stage to use (default: train one)")
    cache.add_argument("--out", help="output folder (default: RUN_DIR/teacher_cache)")
    cache.add_argument("--top-k", type=int, default=None, help="log-probs kept per token (default: the config's)")
    cache.add_argument("--split", default="train", help="dataset split to cache")
    cache.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    cache.set_defaults(func=_lazy("jdistill.train.teacher_cache", "cmd_cache_teacher"))
    compile_ = sub.add_parser(
        "compile",
        help="compile the sharded train step ahead of time for the config's "
        "topology; print per-chip memory, FLOPs, MFU-bound step time",
    )
    compile_.add_argument("--config", required=True, help="a tpu_configs/*.yaml file, preset name or YAML path")
    compile_.add_argument("--topology", help="override cluster.topology (e.g. v5e:4x4, v5p-128, h100:1x8)")
    compile_.add_argument("--json", help="also write the figures to this JSON file")
    compile_.add_argument(
        "--extrapolate",
        action="store_true",
        help="a rough early estimate, not a bound: compile "
        "at 1 and 2 layers and extrapolate linearly to the depth (compile at full depth to decide)",
    )
    compile_.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    compile_.set_defaults(func=_lazy("jdistill.scale.compile", "cmd_compile"))
    launch = sub.add_parser("launch", help="start the config's job on its cluster (TPU VM, xpk, Slurm, Kubernetes)")
    launch.add_argument("--config", required=True, help="a tpu_configs/*.yaml file, preset name or YAML path")
    launch.add_argument("--dry-run", action="store_true", help="print the exact commands instead of running them")
    launch.add_argument("--yes", action="store_true", help="create the resources without asking for confirmation")
    launch.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    launch.set_defaults(func=_lazy("jdistill.scale.launch", "cmd_launch"))
    analyze = sub.add_parser("analyze", help="analyses of a trained model")
    analyze_sub = analyze.add_subparsers(dest="analyze_command", required=True)
    head_gates = analyze_sub.add_parser(
        "head-gates",
        help="causal head gating: label heads facilitating / interfering / irrelevant, with a heat-map PNG",
    )
    head_gates.add_argument("--run-dir", required=True, help="a run directory written by `jdistill train`")
    head_gates.add_argument(
        "--stage", help="a stage with a checkpoint: teacher, student_scratch, student_<recipe> (default: the first)"
    )
    head_gates.add_argument("--lam", type=float, default=0.01, help="regulariser strength for G+ / G-")
    head_gates.add_argument("--steps", type=int, default=200, help="Adam steps per fit")
    head_gates.add_argument("--batches", type=int, default=8, help="training batches the gates are fitted on")
    head_gates.add_argument("--out", help="heat-map PNG (default: RUN_DIR/head_gates_<stage>.png)")
    head_gates.set_defaults(func=cmd_analyze_head_gates)
    add_prune_arguments(sub.add_parser("prune", help="depth-prune an HF checkpoint")).set_defaults(
        func=_lazy("jdistill.hf.prune_cli", "cmd_prune")
    )
    add_export_arguments(sub.add_parser("export", help="a trained stage as an HF checkpoint")).set_defaults(
        func=_lazy("jdistill.hf.export", "cmd_export")
    )
    bench = sub.add_parser("bench", help="kernel benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bench_attention = bench_sub.add_parser("attention", help="time the gated-attention implementations here")
    add_attention_arguments(bench_attention)
    bench_attention.set_defaults(func=run_attention)
    bench_step = bench_sub.add_parser(
        "train-step", help="KD train step vs an equivalent PyTorch loop and vs a plain cross-entropy step"
    )
    bench_step.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    bench_step.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    bench_step.add_argument("--batch", type=int, default=16, help="sequences per step")
    bench_step.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    bench_step.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop")
    bench_step.add_argument("--profile", help="write a jax.profiler trace and per-op HLO timings to this folder")
    bench_step.add_argument("--json", help="also write the figures to this JSON file")
    bench_step.set_defaults(func=_lazy("jdistill.bench.train_step", "run_train_step"))
    importlib.import_module("jdistill.text.cli").register(sub)
    importlib.import_module("jdistill.data.cli").register(sub)
    importlib.import_module("jdistill.bench.data").register(bench_sub)
    importlib.import_module("jdistill.bench.moe").register(bench_sub)
    register_llm_kd(bench_sub)
    register_early_exit(bench_sub)
    importlib.import_module("jdistill.bench.diffusion_cli").register(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    _select_platforms()
    _quiet_libraries()
    try:
        return args.func(args)
    except UserError as error:
        print(f"jdistill: error: {error}", file=sys.stderr)
        return error.exit_code
    except Preempted as stop:  # SIGTERM / SIGINT during a stage: its checkpoint is saved
        print(f"jdistill: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("jdistill: interrupted; continue with --resume --run-dir <the run directory>", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

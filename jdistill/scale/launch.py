"""`jdistill launch`: start the config's job on its cluster, or print exactly what that would run (--dry-run).

TPU configs (`cluster.launcher` gcloud or xpk) print both the TPU VM commands and the xpk variant with
--dry-run; GPU configs (slurm or kubernetes) print the sbatch script or the Kubernetes manifest. Without
--dry-run the configured launcher's commands run one after another (files are written first); a missing
command-line tool (gcloud, xpk, sbatch, kubectl) is a one-line error. See `jdistill.scale.plans`.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from jdistill.errors import ConfigError, UserError
from jdistill.scale.compile import check_mesh, resolve_topology
from jdistill.scale.plans import GPU_LAUNCHERS, PLANS, TPU_LAUNCHERS, Step, cleanup_step

REPO = Path(__file__).resolve().parents[2]


class LaunchError(UserError):
    """A launcher tool is missing or one of its commands failed."""


def plan(config, config_path: str, overrides=(), launcher: str | None = None) -> list[Step]:
    """The steps of `launcher` (default: the config's) for this config."""
    cluster = config.cluster
    topology = resolve_topology(config)
    launcher = launcher or cluster.launcher
    allowed = TPU_LAUNCHERS if topology.platform == "tpu" else GPU_LAUNCHERS
    if launcher not in allowed:
        raise ConfigError(
            f"cluster.launcher: {launcher!r} cannot start {topology.platform.upper()} topology "
            f"{topology.name!r}; use one of {', '.join(allowed)}"
        )
    check_mesh(config, topology)
    return PLANS[launcher](cluster, topology, str(config_path), REPO, list(overrides))


def format_steps(steps: list[Step]) -> str:
    lines = []
    for number, step in enumerate(steps, 1):
        lines.append(f"# {number}. {step.title}")
        if step.file is not None:
            path, text = step.file
            lines += [f"cat > {shlex.quote(path)} <<'EOF'", text.rstrip("\n"), "EOF"]
        lines.append(shlex.join(step.argv))
    return "\n".join(lines)


def dry_run_text(config, config_path: str, overrides=()) -> str:
    """Everything `--dry-run` prints: the configured launcher and, for TPU configs, the other TPU launcher."""
    topology = resolve_topology(config)
    launchers = [config.cluster.launcher]
    if topology.platform == "tpu":
        launchers += [name for name in TPU_LAUNCHERS if name not in launchers]
    sections = [
        f"# {topology.describe()}; launcher {config.cluster.launcher}; run dir "
        f"{config.cluster.options.get('run_dir', 'runs/' + config.cluster.name)}"
    ]
    for launcher in launchers:
        try:
            steps = plan(config, config_path, overrides, launcher)
        except ConfigError as error:
            if launcher == config.cluster.launcher:
                raise
            sections.append(f"## {launcher} variant: not available ({error})")
            continue
        if launcher == "gcloud":
            steps = steps + [cleanup_step(config.cluster)]
        heading = "" if launcher == config.cluster.launcher else " variant"
        sections += [f"## {launcher}{heading}", format_steps(steps)]
    return "\n".join(sections)


def _wait_active(step: Step, poll_seconds: float = 30.0) -> None:
    while True:
        state = subprocess.run(step.argv, capture_output=True, text=True, check=True).stdout.strip()
        print(f"queued resource: {state}", flush=True)
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise LaunchError(f"the queued resource is {state}; see `{shlex.join(step.argv[:7])}`")
        time.sleep(poll_seconds)


def execute(steps: list[Step]) -> None:
    """Run the steps in order; stop at the first failure with a one-line error."""
    tool = steps[0].argv[0]
    if shutil.which(tool) is None:
        raise LaunchError(f"{tool} is not installed or not on PATH; install it, or print the commands with --dry-run")
    for step in steps:
        print(f"# {step.title}\n{shlex.join(step.argv)}", flush=True)
        if step.file is not None:
            Path(step.file[0]).write_text(step.file[1])
        if step.title.startswith("wait until"):
            _wait_active(step)
            continue
        done = subprocess.run(step.argv)
        if done.returncode:
            raise LaunchError(f"`{shlex.join(step.argv)[:200]}` failed with exit status {done.returncode}")


def cmd_launch(args) -> int:
    from jdistill.configs import load_config

    config = load_config(args.config, list(args.overrides))
    from jdistill.configs.parsing import resolve_config_path

    config_path = str(resolve_config_path(args.config))
    if args.dry_run:
        print(dry_run_text(config, config_path, args.overrides))
        return 0
    execute(plan(config, config_path, args.overrides))
    return 0

"""`jdistill launch`: start the config's job on its cluster, or print exactly what that would run (--dry-run).

TPU configs (`cluster.launcher` gcloud or xpk) print both the TPU VM commands and the xpk variant with
--dry-run; GPU configs (slurm or kubernetes) print the sbatch script or the Kubernetes manifest. Without
--dry-run the configured launcher's commands run one after another (files are written first); a missing
command-line tool (gcloud, xpk, sbatch, kubectl) is a one-line error. See `jdistill.scale.plans`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from jdistill.errors import ConfigError, UserError
from jdistill.scale.compile import check_mesh, resolve_topology
from jdistill.scale.confirm import check_no_placeholders, confirm
from jdistill.scale.names import check_cluster
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
    check_cluster(cluster, launcher)
    check_overrides(overrides)
    check_mesh(config, topology)
    return PLANS[launcher](cluster, topology, str(config_path), REPO, list(overrides))


def _delimiter(text: str) -> str:
    """A here-document delimiter that is no line of `text` (EOF, else EOF_1, EOF_2, ...)."""
    lines, delimiter, number = set(text.splitlines()), "EOF", 0
    while delimiter in lines:
        number += 1
        delimiter = f"EOF_{number}"
    return delimiter


def check_overrides(overrides) -> None:
    """Overrides are passed on to `jdistill train` (quoted); a control character (a newline) in one is refused."""
    for override in overrides:
        control = re.search(r"[\x00-\x1f\x7f]", override)
        if control:
            raise ConfigError(f"override {override!r:.80}: contains the control character {control.group()!r}")


def format_steps(steps: list[Step]) -> str:
    lines = []
    for number, step in enumerate(steps, 1):
        lines.append(f"# {number}. {step.title}")
        if step.file is not None:
            path, text = step.file
            end = _delimiter(text)
            lines += [f"cat > {shlex.quote(path)} <<'{end}'", text.rstrip("\n"), end]
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


def check_tools(steps: list[Step]) -> None:
    """Every command-line tool of the plan on PATH (the launcher's own first); a one-line error otherwise."""
    tools = sorted(dict.fromkeys(step.argv[0] for step in steps), key=lambda tool: tool in ("git", "tar"))
    for tool in tools:
        if shutil.which(tool) is None:
            raise LaunchError(
                f"{tool} is not installed or not on PATH; install it, or print the commands with --dry-run"
            )


def write_step_file(path: str, text: str) -> None:
    """A plan's file, inside the current folder (names are validated; this is the last guard), written to a
    temporary name and renamed."""
    target = Path(path).resolve()
    if not target.is_relative_to(Path.cwd().resolve()):
        raise LaunchError(f"{path}: outside the current folder; refusing to write it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)


def execute(steps: list[Step]) -> None:
    """Run the steps in order; stop at the first failure with a one-line error."""
    check_tools(steps)
    for step in steps:
        print(f"# {step.title}\n{shlex.join(step.argv)}", flush=True)
        if step.file is not None:
            write_step_file(*step.file)
        if step.title.startswith("wait until"):
            _wait_active(step)
            continue
        done = subprocess.run(step.argv)
        if done.returncode:
            raise LaunchError(f"`{shlex.join(step.argv)[:200]}` failed with exit status {done.returncode}")


def summary(config, steps: list[Step]) -> str:
    """What a launch creates, for the confirmation question."""
    cluster, topology = config.cluster, resolve_topology(config)
    where = f"project {cluster.project}, zone {cluster.zone}" if cluster.launcher in TPU_LAUNCHERS else "the cluster"
    return (
        f"jdistill launch: {cluster.launcher} job {cluster.name!r} on {topology.describe()} in {where}; "
        f"{len(steps)} commands (see --dry-run)"
    )


def cmd_launch(args) -> int:
    from jdistill.configs import load_config, to_dict
    from jdistill.configs.parsing import resolve_config_path

    config = load_config(args.config, list(args.overrides))
    config_path = str(resolve_config_path(args.config))
    if args.dry_run:
        print(dry_run_text(config, config_path, args.overrides))
        return 0
    steps = plan(config, config_path, args.overrides)
    check_no_placeholders(to_dict(config))
    check_tools(steps)
    confirm(summary(config, steps), yes=getattr(args, "yes", False))
    execute(steps)
    return 0

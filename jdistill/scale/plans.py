"""What `jdistill launch` runs for each launcher: argv lists (printed with `shlex.join`) and files to write.

- gcloud: a Cloud TPU queued resource (one slice, or `--node-count` slices for multi-slice), the repository and
  config copied to every worker and installed, then `jdistill train` on all workers at once over SSH. Every
  worker runs the same command; JAX finds the other hosts of the slice itself (`jax.distributed.initialize()`
  on a TPU VM needs no arguments) and multi-slice jobs get their DCN peers from the MEGASCALE_* variables the
  queued resource sets.
- xpk: one `xpk workload create` on an existing GKE cluster (`cluster.options.cluster`); xpk builds an image from
  the repository (`--script-dir`) and starts one pod per host, slices joined as a JobSet.
- slurm: an sbatch script, one task per node holding all of its GPUs; the coordinator is the first node.
- kubernetes: an Indexed Job (one pod per node) with a headless Service, so pod 0 is `NAME-0.NAME` (the
  coordinator), and a ConfigMap holding the config.
Run directory: `cluster.options.run_dir` (default `runs/NAME`). Config overrides given to `jdistill launch` are
passed on to `jdistill train`.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import yaml

from jdistill.errors import ConfigError
from jdistill.scale.topologies import Topology

COORDINATOR_PORT = 8476
REMOTE_DIR = "jdistill"  # relative to the home directory, where scp and ssh commands start
REMOTE_CONFIG = "jdistill_config.yaml"
REMOTE_ARCHIVE = "jdistill_package.tar.gz"
DEFAULT_INSTALL = (
    f"rm -rf {REMOTE_DIR} && tar -xzf {REMOTE_ARCHIVE} && pip install -U 'jax[tpu]' && pip install ./{REMOTE_DIR}"
)


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing to do: run `argv`, after writing `file` (path, text) when there is one."""

    title: str
    argv: tuple[str, ...]
    file: tuple[str, str] | None = None


def archive_path(name: str, suffix: str) -> str:
    """Where the package archive of cluster `name` is written: the current folder (absolute, since `git -C`
    changes folder before writing it)."""
    return str(Path.cwd() / f"{name}-package{suffix}")


def package_step(repo: Path, archive: str, prefix: str) -> Step:
    """`git archive HEAD` of the repository: the committed files only (no runs, caches, virtual environments or
    uncommitted edits), under `prefix/`. A repository that is not a git checkout (an installed wheel) cannot be
    shipped this way: a one-line error that says to set `cluster.options.install`."""
    if not (repo / ".git").exists():
        raise ConfigError(
            f"cluster.options.install: not set, and {repo} is not a git checkout to package with `git archive`; "
            "set it to a command that installs jdistill on the workers"
        )
    fmt = "tar.gz" if archive.endswith(".tar.gz") else "tar"
    return Step(
        "package the repository: `git archive HEAD` (committed files only, not the working tree)",
        ("git", "-C", str(repo), "archive", f"--format={fmt}", f"--prefix={prefix}/", "-o", archive, "HEAD"),
    )


def run_dir(cluster) -> str:
    return str(cluster.options.get("run_dir", f"runs/{cluster.name}"))


def train_command(config_path: str, cluster, overrides) -> str:
    return shlex.join(["jdistill", "train", "--config", config_path, "--run-dir", run_dir(cluster), *overrides])


def _where(cluster) -> list[str]:
    return ["--project", cluster.project, "--zone", cluster.zone]


def gcloud_plan(cluster, topology: Topology, config_path: str, repo: Path, overrides) -> list[Step]:
    """Queued resource, copy + install on all workers, `jdistill train` on all workers, and the clean-up."""
    name, runtime = cluster.name, cluster.runtime_version or topology.chip.runtime_version
    create = [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        name,
        *_where(cluster),
        "--accelerator-type",
        topology.accelerator_type,
        "--runtime-version",
        runtime,
    ]
    if topology.num_slices > 1:
        create += ["--node-count", str(topology.num_slices), "--node-prefix", name]
        nodes = [f"{name}-{index}" for index in range(topology.num_slices)]
    else:
        create += ["--node-id", name]
        nodes = [name]
    for flag in ("spot", "reserved"):
        if cluster.options.get(flag):
            create.append(f"--{flag}")
    install = cluster.options.get("install", DEFAULT_INSTALL)
    # packaged first: a repository that cannot be packaged fails before the (paid) slice exists
    steps = [] if "install" in cluster.options else [package_step(repo, archive_path(name, ".tar.gz"), REMOTE_DIR)]
    steps += [
        Step("create the TPU slice(s) (a queued resource; it waits for capacity)", tuple(create)),
        Step(
            "wait until the queued resource is ACTIVE",
            (
                "gcloud",
                "compute",
                "tpus",
                "queued-resources",
                "describe",
                name,
                *_where(cluster),
                "--format",
                "value(state.state)",
            ),
        ),
    ]
    for node in nodes:
        if "install" not in cluster.options:
            steps.append(
                Step(
                    f"copy the package to every worker of {node}",
                    (
                        "gcloud",
                        "compute",
                        "tpus",
                        "tpu-vm",
                        "scp",
                        archive_path(name, ".tar.gz"),
                        f"{node}:{REMOTE_ARCHIVE}",
                        "--worker=all",
                        *_where(cluster),
                    ),
                )
            )
        steps.append(
            Step(
                f"copy the config to every worker of {node}",
                (
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "scp",
                    config_path,
                    f"{node}:{REMOTE_CONFIG}",
                    "--worker=all",
                    *_where(cluster),
                ),
            )
        )
        steps.append(
            Step(
                f"install on every worker of {node}",
                (
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "ssh",
                    node,
                    "--worker=all",
                    *_where(cluster),
                    "--command",
                    install,
                ),
            )
        )
    train = train_command(REMOTE_CONFIG, cluster, overrides)
    if topology.num_slices > 1:
        steps.append(
            Step(
                "train: every worker of every slice runs the same command",
                (
                    "gcloud",
                    "compute",
                    "tpus",
                    "queued-resources",
                    "ssh",
                    name,
                    "--node=all",
                    "--worker=all",
                    *_where(cluster),
                    "--command",
                    train,
                ),
            )
        )
    else:
        steps.append(
            Step(
                "train: every worker runs the same command (JAX joins the hosts itself)",
                (
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "ssh",
                    name,
                    "--worker=all",
                    *_where(cluster),
                    "--command",
                    train,
                ),
            )
        )
    return steps


def cleanup_step(cluster) -> Step:
    return Step(
        "afterwards: delete the slice(s)",
        (
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            cluster.name,
            *_where(cluster),
            "--force",
            "--async",
        ),
    )


def xpk_plan(cluster, topology: Topology, config_path: str, repo: Path, overrides) -> list[Step]:
    """`xpk workload create` on the GKE cluster `cluster.options.cluster` (created once with `xpk cluster create`);
    the image is built from `git archive HEAD` unpacked into NAME-package/ with the config beside it."""
    gke = cluster.options.get("cluster")
    if not gke:
        raise ConfigError("cluster.options.cluster: not set; the xpk launcher needs the GKE cluster's name")
    archive = archive_path(cluster.name, ".tar")
    script_dir = archive.removesuffix(".tar")
    command = f"pip install . && {train_command(REMOTE_CONFIG, cluster, overrides)}"
    tpu = ["--tpu-type", topology.accelerator_type, "--num-slices", str(topology.num_slices)]
    return [
        package_step(repo, archive, Path(script_dir).name),
        Step("unpack it (the folder xpk builds the image from)", ("tar", "-xf", archive, "-C", str(Path.cwd()))),
        Step(
            "once: the GKE cluster with the TPU node pools (skip if it exists)",
            ("xpk", "cluster", "create", "--cluster", gke, *tpu, *_where(cluster)),
        ),
        Step(
            "train: one pod per TPU host, slices joined as a JobSet",
            (
                "xpk",
                "workload",
                "create",
                "--cluster",
                gke,
                "--workload",
                cluster.name,
                *tpu,
                *_where(cluster),
                "--base-docker-image",
                str(cluster.options.get("base_image", "python:3.11")),
                "--script-dir",
                script_dir,
                "--command",
                command,
            ),
            (str(Path(script_dir) / REMOTE_CONFIG), Path(config_path).read_text()),
        ),
    ]


def sbatch_script(cluster, topology: Topology, config_path: str, overrides) -> str:
    """One task per node with all its GPUs; process ids and the coordinator come from Slurm."""
    options = cluster.options
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={cluster.name}",
        f"#SBATCH --nodes={topology.grid[0]}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={topology.grid[1]}",
        "#SBATCH --exclusive",
        f"#SBATCH --output={cluster.name}-%j.out",
    ]
    lines += [f"#SBATCH --{key}={options[key]}" for key in ("partition", "account", "time") if key in options]
    train = train_command(str(Path(config_path).resolve()), cluster, overrides)
    lines += [
        "set -euo pipefail",
        'COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'export JDISTILL_COORDINATOR="$COORDINATOR:{COORDINATOR_PORT}"',
        "srun --ntasks-per-node=1 bash -c "
        + shlex.quote(
            f"{train} cluster.distributed=on cluster.coordinator_address=$JDISTILL_COORDINATOR "
            "cluster.num_processes=$SLURM_NTASKS cluster.process_id=$SLURM_PROCID"
        ),
        "",
    ]
    return "\n".join(lines)


def slurm_plan(cluster, topology: Topology, config_path: str, repo: Path, overrides) -> list[Step]:
    del repo
    path = f"{cluster.name}.sbatch"
    return [
        Step(
            f"write {path} and submit it",
            ("sbatch", path),
            (path, sbatch_script(cluster, topology, config_path, overrides)),
        )
    ]


def kubernetes_manifest(cluster, topology: Topology, config_path: str, overrides) -> str:
    """ConfigMap (the config), headless Service (pod DNS) and an Indexed Job with one pod per node."""
    name, nodes = cluster.name, topology.grid[0]
    namespace = str(cluster.options.get("namespace", "default"))
    image = cluster.options.get("image")
    if not image:
        raise ConfigError(
            "cluster.options.image: not set; the kubernetes launcher needs a container image with jdistill installed"
        )
    meta = {"name": name, "namespace": namespace}
    train = train_command("/etc/jdistill/config.yaml", cluster, overrides)
    cluster_flags = shlex.join(
        [
            "cluster.distributed=on",
            f"cluster.coordinator_address={name}-0.{name}:{COORDINATOR_PORT}",
            f"cluster.num_processes={nodes}",
        ]
    )
    command = f"{train} {cluster_flags} cluster.process_id=$JOB_COMPLETION_INDEX"  # the one expansion: the index
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "namespace": namespace},
        "data": {"config.yaml": Path(config_path).read_text()},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            "ports": [{"port": COORDINATOR_PORT, "name": "coordinator"}],
        },
    }
    container = {
        "name": "jdistill",
        "image": str(image),
        "command": ["bash", "-c", command],
        "ports": [{"containerPort": COORDINATOR_PORT}],
        "resources": {"limits": {"nvidia.com/gpu": topology.grid[1]}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/jdistill"}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "subdomain": name,
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                }
            },
        },
    }
    return yaml.dump_all([config_map, service, job], Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded config) as literal blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def kubernetes_plan(cluster, topology: Topology, config_path: str, repo: Path, overrides) -> list[Step]:
    del repo
    path = f"{cluster.name}.yaml"
    return [
        Step(
            f"write {path} and apply it",
            ("kubectl", "apply", "-f", path),
            (path, kubernetes_manifest(cluster, topology, config_path, overrides)),
        )
    ]


PLANS = {"gcloud": gcloud_plan, "xpk": xpk_plan, "slurm": slurm_plan, "kubernetes": kubernetes_plan}
TPU_LAUNCHERS, GPU_LAUNCHERS = ("gcloud", "xpk"), ("slurm", "kubernetes")

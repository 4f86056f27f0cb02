"""`jdistill launch --dry-run` for every config in tpu_configs/: every printed command parses with shlex and names
the right tool, flags and values (project, zone, accelerator type, slices, nodes, GPUs, run directory); the
Slurm script and Kubernetes manifest are well-formed; missing fields and tools are one-line errors."""

import shlex
from pathlib import Path

import pytest
import yaml

from jdistill.configs import load_config
from jdistill.scale import launch
from jdistill.scale.topologies import parse_topology

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "tpu_configs").glob("*.yaml"))
ACCELERATOR_TYPES = {
    "v4-8": "v4-8",
    "v4-32": "v4-32",
    "v5e-16": "v5litepod-16",
    "v5e-256": "v5litepod-256",
    "v5p-128": "v5p-128",
    "2x-v5e-256": "v5litepod-256",
}


def commands(text: str) -> list[list[str]]:
    """The printed commands (comments and here-document bodies skipped), each split with shlex."""
    out, in_file = [], False
    for line in text.splitlines():
        if in_file:
            in_file = line != "EOF"
            continue
        if line.startswith("#") or not line.strip():
            continue
        argv = shlex.split(line)
        if argv[0] == "cat":
            in_file = True
        out.append(argv)
    return out


def flag(argv, name):
    return argv[argv.index(name) + 1]


def here_document(text: str, path: str) -> str:
    start = text.index(f"cat > {path} <<'EOF'\n") + len(f"cat > {path} <<'EOF'\n")
    return text[start : text.index("\nEOF\n", start)]


def test_every_config_is_covered():
    names = {path.stem for path in CONFIGS}
    assert set(ACCELERATOR_TYPES) | {"h100-1x8", "h100-4x8"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in ACCELERATOR_TYPES], ids=lambda p: p.stem)
def test_tpu_dry_run_commands(path):
    config = load_config(str(path))
    cluster, topology = config.cluster, parse_topology(config.cluster.topology, config.cluster.num_slices)
    text = launch.dry_run_text(config, str(path), ["student.train.steps=10"])
    argvs = commands(text)
    gcloud = [a for a in argvs if a[0] == "gcloud"]
    assert gcloud and all(flag(a, "--project") == cluster.project and flag(a, "--zone") == cluster.zone for a in gcloud)
    create = next(a for a in gcloud if a[3:5] == ["queued-resources", "create"])
    assert create[5] == cluster.name and flag(create, "--accelerator-type") == ACCELERATOR_TYPES[path.stem]
    assert flag(create, "--runtime-version") == cluster.runtime_version
    if topology.num_slices > 1:
        assert flag(create, "--node-count") == str(topology.num_slices)
        train = next(a for a in gcloud if a[3:5] == ["queued-resources", "ssh"])
        assert "--node=all" in train
    else:
        assert flag(create, "--node-id") == cluster.name
        train = [a for a in gcloud if a[3:5] == ["tpu-vm", "ssh"]][-1]
    assert "--worker=all" in train
    remote = shlex.split(flag(train, "--command"))
    assert remote[:3] == ["jdistill", "train", "--config"] and "student.train.steps=10" in remote
    assert flag(remote, "--run-dir") == cluster.options["run_dir"]
    scp = [a for a in gcloud if a[3:5] == ["tpu-vm", "scp"]]
    assert len(scp) == 2 * topology.num_slices and all("--worker=all" in a for a in scp)
    assert any(a[3:5] == ["queued-resources", "delete"] for a in gcloud)
    xpk = [a for a in argvs if a[0] == "xpk"]
    if "cluster" in cluster.options:  # the xpk variant needs the GKE cluster's name
        workload = next(a for a in xpk if a[1:3] == ["workload", "create"])
        assert flag(workload, "--workload") == cluster.name
        assert flag(workload, "--tpu-type") == ACCELERATOR_TYPES[path.stem]
        assert flag(workload, "--num-slices") == str(topology.num_slices)
        inner = shlex.split(flag(workload, "--command").split("&&")[1])
        assert flag(inner, "--config") == "jdistill_config.yaml"  # written into the packaged folder
        written = here_document(text, f"{flag(workload, '--script-dir')}/jdistill_config.yaml")
        assert written == path.read_text().rstrip()
    else:
        assert not xpk and "xpk variant: not available (cluster.options.cluster" in text


def test_slurm_script():
    path = ROOT / "tpu_configs" / "h100-1x8.yaml"
    config = load_config(str(path))
    text = launch.dry_run_text(config, str(path))
    argvs = commands(text)
    script_name = f"{config.cluster.name}.sbatch"
    assert argvs[-1] == ["sbatch", script_name]
    script = here_document(text, script_name)
    assert script.startswith("#!/bin/bash\n")
    directives = dict(
        (line[len("#SBATCH --") :] + "=").split("=")[:2] for line in script.splitlines() if line.startswith("#SBATCH")
    )
    assert directives["nodes"] == "1" and directives["gpus-per-node"] == "8"
    assert directives["partition"] == "gpu" and directives["job-name"] == config.cluster.name
    srun = next(shlex.split(line) for line in script.splitlines() if line.startswith("srun"))
    inner = shlex.split(srun[-1])
    assert flag(inner, "--config") == str(path.resolve())
    assert "cluster.process_id=$SLURM_PROCID" in inner and "cluster.distributed=on" in inner


def test_kubernetes_manifest():
    path = ROOT / "tpu_configs" / "h100-4x8.yaml"
    config = load_config(str(path))
    text = launch.dry_run_text(config, str(path))
    manifest_name = f"{config.cluster.name}.yaml"
    assert commands(text)[-1] == ["kubectl", "apply", "-f", manifest_name]
    config_map, service, job = yaml.safe_load_all(here_document(text, manifest_name))
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == yaml.safe_load(path.read_text())
    assert service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == config.cluster.name
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    inner = shlex.split(container["command"][2])
    assert f"cluster.coordinator_address={config.cluster.name}-0.{config.cluster.name}:8476" in inner
    assert "cluster.num_processes=4" in inner


def one_line_error(capsys, *argv):
    from jdistill.cli import main

    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_project_or_zone_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "cluster.project" in one_line_error(
        capsys, "launch", "--config", "tpu_configs/v5e-16.yaml", "--dry-run", "cluster.project=null"
    )
    assert "cluster.zone" in one_line_error(
        capsys, "launch", "--config", "tpu_configs/v4-8.yaml", "--dry-run", "cluster.zone=null"
    )


def test_wrong_launcher_for_the_platform_is_a_config_error():
    config = load_config("tpu_configs/h100-1x8.yaml", ["cluster.launcher=gcloud"])
    with pytest.raises(launch.ConfigError, match=r"cluster\.launcher"):
        launch.plan(config, "tpu_configs/h100-1x8.yaml")


def test_without_dry_run_a_missing_tool_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    own = {  # the placeholders of the shipped configs replaced (a launch refuses them before looking for tools)
        "v5e-16": ["cluster.project=proj-123456"],
        "h100-1x8": ["cluster.options.account=acct"],
        "h100-4x8": ["cluster.options.image=ghcr.io/org/jdistill:1"],
    }
    for config, tool in [("v5e-16", "gcloud"), ("h100-1x8", "sbatch"), ("h100-4x8", "kubectl")]:
        message = one_line_error(capsys, "launch", "--config", f"tpu_configs/{config}.yaml", *own[config])
        assert message.startswith(f"jdistill: error: {tool} is not installed")
    assert not (ROOT / "jdistill-h100-1x8.sbatch").exists()  # nothing is written before the tool check

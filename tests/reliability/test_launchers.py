"""`jdistill launch` with hostile strings: every cluster field that reaches a script, a command line, a file name or
a Kubernetes name is validated (one-line ConfigError naming the field, nothing written), and the values that may
hold anything (run_dir, overrides) reach `jdistill train` unchanged through the generated Slurm script, Kubernetes
`bash -c` and TPU `--command` strings, run here by bash with stub tools, without running any injected command.
Without --dry-run, placeholders of the shipped configs are refused, the user confirms (or passes --yes), and the
TPU VMs receive `git archive HEAD`, not the working tree."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.scale import launch
from jdistill.scale.confirm import PLACEHOLDERS, NotConfirmedError, confirm
from jdistill.scale.plans import REMOTE_CONFIG, Step

ROOT = Path(__file__).parents[2]
CONFIGS = {path.stem: path for path in sorted((ROOT / "tpu_configs").glob("*.yaml"))}
TPU, SLURM, KUBERNETES = "v4-8", "h100-1x8", "h100-4x8"

# Strings an attacker (or a slip) might put into a config: shell metacharacters, command substitution, quotes,
# line breaks, path escapes, unicode look-alikes, option injection, control characters, a very long value.
HOSTILE = {
    "newline": "x\ntouch PWNED\n#",
    "carriage-return": "x\rtouch PWNED",
    "semicolon": "a; touch PWNED",
    "and": "a && touch PWNED",
    "pipe": "a | touch PWNED",
    "subshell": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "variable": "${HOME}",
    "single-quote": "a'; touch PWNED; '",
    "double-quote": 'a"; touch PWNED; "',
    "dotdot": "../escaped",
    "absolute": "/tmp/escaped",
    "unicode": "jdistill-\u0441luster",  # Cyrillic es
    "emoji": "run-\U0001f680",
    "option": "--help",
    "space": "a b",
    "tab": "a\tb",
    "nul": "a\x00b",
    "glob": "*",
    "heredoc-end": "EOF",
    "long": "a" * 300,
    "empty": "",
}

# (field, config, a valid value): the fields with a fixed character set; each hostile string is refused in all.
STRICT_FIELDS = {
    "cluster.name": (TPU, "jdistill-x"),
    "cluster.project": (TPU, "proj-123456"),
    "cluster.zone": (TPU, "us-west4-a"),
    "cluster.runtime_version": (TPU, "v2-alpha-tpuv5-lite"),
    "cluster.options.cluster": ("2x-v5e-256", "gke-1"),
    "cluster.options.base_image": ("2x-v5e-256", "python:3.11"),
    "cluster.options.image": (KUBERNETES, "ghcr.io/org/jdistill:1"),
    "cluster.options.namespace": (KUBERNETES, "team-a"),
    "cluster.options.partition": (SLURM, "gpu"),
    "cluster.options.account": (SLURM, "acct"),
    "cluster.options.time": (SLURM, "48:00:00"),
}


def with_field(config, field: str, value):
    """`config` with the dotted cluster field set to `value` (no YAML parsing: any string can be tried)."""
    cluster = config.cluster
    if field.startswith("cluster.options."):
        options = {**cluster.options, field.removeprefix("cluster.options."): value}
        return dataclasses.replace(config, cluster=dataclasses.replace(cluster, options=options))
    return dataclasses.replace(config, cluster=dataclasses.replace(cluster, **{field.removeprefix("cluster."): value}))


def test_the_valid_values_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for field, (name, value) in STRICT_FIELDS.items():
        launch.plan(with_field(load_config(str(CONFIGS[name])), field, value), str(CONFIGS[name]))


@pytest.mark.parametrize("field", sorted(STRICT_FIELDS))
@pytest.mark.parametrize("hostile", sorted(set(HOSTILE) - {"heredoc-end"}), ids=str)  # EOF: a valid partition
def test_a_hostile_value_is_a_one_line_error_naming_the_field(field, hostile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name, _ = STRICT_FIELDS[field]
    config = with_field(load_config(str(CONFIGS[name])), field, HOSTILE[hostile])
    with pytest.raises(ConfigError) as caught:
        launch.plan(config, str(CONFIGS[name]))
    message = str(caught.value)
    assert message.startswith(field + ":") and "\n" not in message and "\r" not in message
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("hostile", ["newline", "carriage-return", "nul", "tab"])
def test_control_characters_in_run_dir_and_overrides_are_refused(hostile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(str(CONFIGS[SLURM]))
    with pytest.raises(ConfigError, match=r"^cluster\.options\.run_dir: .*control character"):
        launch.plan(with_field(config, "cluster.options.run_dir", HOSTILE[hostile]), str(CONFIGS[SLURM]))
    with pytest.raises(ConfigError, match=r"^override .*control character"):
        launch.plan(config, str(CONFIGS[SLURM]), [f"run.export={HOSTILE[hostile]}"])


def test_unknown_options_are_refused():
    config = with_field(load_config(str(CONFIGS[SLURM])), "cluster.options.partiton", "gpu")
    with pytest.raises(ConfigError, match=r"^cluster\.options\.partiton: unknown option \(known: "):
        launch.plan(config, str(CONFIGS[SLURM]))


# ---- the values that may hold anything reach `jdistill train` as they are --------------------------------------

PASSED_ON = sorted(set(HOSTILE) - {"newline", "carriage-return", "nul", "tab", "empty"})


@pytest.fixture
def stubs(tmp_path):
    """A bin folder of stub tools: `jdistill` writes its argv as JSON to argv.json; `srun` runs its command;
    `scontrol` prints a host name; every other tool of a plan logs its argv to calls.jsonl (`describe` -> ACTIVE)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logger = (
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps([os.path.basename(sys.argv[0])] + "
        "sys.argv[1:]) + '\\n')\nprint('ACTIVE' if 'describe' in sys.argv else '')\n"
    )
    scripts = {
        "jdistill": "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n",
        "srun": '#!/bin/bash\nshift\n"$@"\n',  # drop --ntasks-per-node=1, run `bash -c COMMAND`
        "scontrol": "#!/bin/bash\necho node-0\n",
        **{tool: logger for tool in ("gcloud", "xpk", "sbatch", "kubectl", "git", "tar", "pip")},
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_bash(arguments: list[str], stubs: Path, cwd: Path, **env) -> list[str]:
    """Run bash `arguments` with the stub tools first on PATH; the argv `jdistill` received."""
    environment = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", **env}
    subprocess.run(["bash", *arguments], cwd=cwd, env=environment, check=True, timeout=60)
    return json.loads((cwd / "argv.json").read_text())


def hostile_job(name: str, hostile: str):
    config = with_field(load_config(str(CONFIGS[name])), "cluster.options.run_dir", HOSTILE[hostile])
    return config, [f"run.export={HOSTILE[hostile]}", "student.train.steps=3"]


@pytest.mark.parametrize("hostile", PASSED_ON)
def test_slurm_script_passes_values_unchanged(hostile, stubs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, overrides = hostile_job(SLURM, hostile)
    (step,) = launch.plan(config, str(CONFIGS[SLURM]), overrides)
    script = tmp_path / "job.sbatch"
    script.write_text(step.file[1])
    argv = run_bash([str(script)], stubs, tmp_path, SLURM_JOB_NODELIST="node-0", SLURM_NTASKS="1", SLURM_PROCID="0")
    assert argv[argv.index("--run-dir") + 1] == HOSTILE[hostile]
    assert f"run.export={HOSTILE[hostile]}" in argv and "cluster.process_id=0" in argv
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("hostile", PASSED_ON)
def test_kubernetes_command_passes_values_unchanged(hostile, stubs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, overrides = hostile_job(KUBERNETES, hostile)
    config = with_field(config, "cluster.options.image", "ghcr.io/org/jdistill:1")
    (step,) = launch.plan(config, str(CONFIGS[KUBERNETES]), overrides)
    job = list(yaml.safe_load_all(step.file[1]))[2]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["bash", "-c"]
    argv = run_bash(command[1:], stubs, tmp_path, JOB_COMPLETION_INDEX="3")
    assert argv[argv.index("--run-dir") + 1] == HOSTILE[hostile]
    assert f"run.export={HOSTILE[hostile]}" in argv and "cluster.process_id=3" in argv
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("hostile", PASSED_ON)
def test_tpu_ssh_command_passes_values_unchanged(hostile, stubs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, overrides = hostile_job(TPU, hostile)
    train = launch.plan(config, str(CONFIGS[TPU]), overrides)[-1].argv
    remote = train[train.index("--command") + 1]  # what the worker's login shell runs
    argv = run_bash(["-c", remote], stubs, tmp_path)
    assert argv[:4] == ["train", "--config", REMOTE_CONFIG, "--run-dir"] and argv[4] == HOSTILE[hostile]
    assert f"run.export={HOSTILE[hostile]}" in argv
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("hostile", ["subshell", "semicolon", "backticks", "single-quote"])
def test_kubernetes_quoting_holds_without_name_validation(hostile, stubs, tmp_path):
    """The second layer: a name that got past validation still reaches `jdistill train` as one argument."""
    from jdistill.scale.plans import kubernetes_manifest
    from jdistill.scale.topologies import parse_topology

    config = with_field(load_config(str(CONFIGS[KUBERNETES])), "cluster.name", HOSTILE[hostile])
    topology = parse_topology(config.cluster.topology, 1)
    job = list(yaml.safe_load_all(kubernetes_manifest(config.cluster, topology, str(CONFIGS[KUBERNETES]), [])))[2]
    argv = run_bash(job["spec"]["template"]["spec"]["containers"][0]["command"][1:], stubs, tmp_path)
    name = HOSTILE[hostile]
    assert f"cluster.coordinator_address={name}-0.{name}:8476" in argv and not (tmp_path / "PWNED").exists()


def test_xpk_command_passes_values_unchanged(stubs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, overrides = hostile_job("2x-v5e-256", "subshell")
    workload = launch.plan(config, str(CONFIGS["2x-v5e-256"]), overrides)[-1].argv
    argv = run_bash(["-c", workload[workload.index("--command") + 1]], stubs, tmp_path)
    assert argv[argv.index("--run-dir") + 1] == HOSTILE["subshell"] and not (tmp_path / "PWNED").exists()


def test_a_file_holding_the_heredoc_end_is_printed_with_another_delimiter(tmp_path):
    text = "a: 1\nEOF\n$(touch PWNED)\n"
    printed = launch.format_steps([Step("write it", ("true",), ("out.yaml", text))])
    assert "<<'EOF_1'" in printed
    subprocess.run(["bash", "-c", printed], cwd=tmp_path, check=True, timeout=30)
    assert (tmp_path / "out.yaml").read_text() == text and not (tmp_path / "PWNED").exists()


def test_files_outside_the_current_folder_are_never_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(launch.LaunchError, match="outside the current folder"):
        launch.write_step_file("../escaped.sbatch", "#!/bin/bash\n")
    assert not (tmp_path.parent / "escaped.sbatch").exists()


# ---- launching for real: placeholders, confirmation, what is copied ----------------------------------------------


def cli(*argv, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "jdistill.cli", "launch", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def in_process(capsys, *argv) -> tuple[int, list[str]]:
    from jdistill.cli import main

    code = main(["launch", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_shipped_config_is_refused_with_its_placeholders(name, stubs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    code, lines = in_process(capsys, "--config", str(CONFIGS[name]), "--yes")
    assert code == 2 and len(lines) == 1, lines
    assert "is a placeholder of the example configs" in lines[0]
    assert any(f"{word!r}" in lines[0] for word in PLACEHOLDERS)
    assert not (tmp_path / "calls.jsonl").exists() and not any(tmp_path.glob("*.sbatch"))


OWN_VALUES = ["cluster.project=proj-123456", "cluster.name=my-own-job"]


def test_a_placeholder_in_any_value_is_refused(stubs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    export = "run.export=/mnt/my-bucket/models/x"
    code, lines = in_process(capsys, "--config", str(CONFIGS[TPU]), *OWN_VALUES, export, "--yes")
    assert code == 2 and lines == [
        "jdistill: error: run.export: 'my-bucket' is a placeholder of the example configs; set your own value "
        "(in the config or as run.export=VALUE) before launching, or print the commands with --dry-run"
    ]


def test_without_a_terminal_or_yes_nothing_runs(stubs, tmp_path):
    result = subprocess.run(
        ["python3", "-m", "jdistill.cli", "launch", "--config", str(CONFIGS[TPU]), *OWN_VALUES],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{stubs}:{os.environ['PATH']}"},
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "stdin is not a terminal" in result.stderr and "--yes" in result.stderr
    assert not (tmp_path / "calls.jsonl").exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_question_on_a_terminal():
    out = io.StringIO()
    confirm("creates a slice", yes=False, stdin=Terminal("y\n"), stdout=out)
    assert out.getvalue() == "creates a slice\nCreate these resources? [y/N] "
    for answer in ("\n", "n\n", "yes please\n", ""):
        with pytest.raises(NotConfirmedError, match="not confirmed; nothing was created"):
            confirm("creates a slice", yes=False, stdin=Terminal(answer), stdout=io.StringIO())
    confirm("creates a slice", yes=True, stdin=io.StringIO(""), stdout=out)  # --yes: no terminal needed


def test_with_yes_the_plan_runs_and_ships_the_package_only(stubs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    code, _ = in_process(capsys, "--config", str(CONFIGS[TPU]), *OWN_VALUES, "--yes")
    assert code == 0
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls[0][:2] == ["git", "-C"] and calls[0][-1] == "HEAD" and "archive" in calls[0]
    assert calls[1][3:5] == ["queued-resources", "create"]  # the slice is created after the package is made
    copies = [call[5:7] for call in calls if "scp" in call]
    assert copies == [
        [str(tmp_path / "my-own-job-package.tar.gz"), "my-own-job:jdistill_package.tar.gz"],
        [str(CONFIGS[TPU]), f"my-own-job:{REMOTE_CONFIG}"],
    ]
    assert not any("--recurse" in call for call in calls)


def test_the_package_is_the_committed_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(str(CONFIGS[TPU]), OWN_VALUES)
    package = launch.plan(config, str(CONFIGS[TPU]))[0]
    subprocess.run(package.argv, check=True, timeout=60, capture_output=True)
    with tarfile.open(tmp_path / "my-own-job-package.tar.gz") as archive:
        files = {member.name.removeprefix("jdistill/") for member in archive.getmembers() if member.isfile()}
    committed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert {"jdistill/cli.py", "pyproject.toml"} <= files and files == set(committed) - {""}
    assert not any(name.startswith(("runs/", ".git/", ".venv/")) for name in files)


def test_dry_run_still_prints_placeholder_configs():
    result = cli("--config", str(CONFIGS[TPU]), "--dry-run")
    assert result.returncode == 0 and "my-gcp-project" in result.stdout
    assert shlex.split(result.stdout.splitlines()[3])[:4] == ["git", "-C", str(ROOT), "archive"]

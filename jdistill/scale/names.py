"""What `jdistill launch` accepts in `cluster.*` before it writes a script or runs a command.

Every string of the cluster block ends up in a shell command, an sbatch directive, a file name or a Kubernetes
object name, so each is checked against the rules of the place it goes (a one-line `ConfigError` naming the field
and the rule) before any file is written; the plans then quote every value (`shlex`) or emit it as YAML data.

- `cluster.name`: a DNS label (lowercase letters, digits and `-`, starting with a letter, not ending with `-`), at
  most 50 characters so that `NAME-INDEX` pod, node and ConfigMap names stay within Kubernetes' and Cloud TPU's
  63; the same rule for every launcher, since the name is also the file name of the sbatch script / manifest.
- `cluster.project`: a Google Cloud project id (6 to 30 lowercase letters, digits and `-`, starting with a letter).
- `cluster.zone`: a Google Cloud zone such as `us-west4-a`; `cluster.runtime_version`: letters, digits, `.-_`.
- `cluster.options`: only the keys a launcher reads (`OPTION_RULES`), each with its own rule; `run_dir` may be
  any path or `gs://` URL without control characters; `install` is a shell command by design (gcloud launcher).
"""

from __future__ import annotations

import re
from typing import Any

from jdistill.errors import ConfigError

MAX_NAME = 50
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PROJECT_ID = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # runtime versions, Slurm partitions and accounts
SLURM_TIME = re.compile(r"[0-9][0-9:-]*|UNLIMITED|INFINITE|unlimited|infinite")
IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]*", re.IGNORECASE)  # registry/path:tag@digest
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# option -> (rule, what the rule says, most characters)
OPTION_RULES: dict[str, tuple[re.Pattern | None, str, int]] = {
    "run_dir": (None, "a path or gs:// URL without control characters", 1024),
    "install": (None, "a shell command without control characters other than newlines", 4096),
    "cluster": (DNS_LABEL, "a GKE cluster name (lowercase letters, digits and '-', starting with a letter)", 40),
    "base_image": (IMAGE, "a container image reference (letters, digits and ._/:@-)", 255),
    "image": (IMAGE, "a container image reference (letters, digits and ._/:@-)", 255),
    "namespace": (DNS_LABEL, "a Kubernetes namespace (a DNS label)", 63),
    "partition": (TOKEN, "a Slurm partition (letters, digits and ._-)", 64),
    "account": (TOKEN, "a Slurm account (letters, digits and ._-)", 64),
    "time": (SLURM_TIME, "a Slurm time limit such as 48:00:00 or 2-00:00:00", 32),
    "spot": (None, "true or false", 0),
    "reserved": (None, "true or false", 0),
}
FLAGS = ("spot", "reserved")


def _check(field: str, value: Any, pattern: re.Pattern | None, rule: str, limit: int) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected {rule}, got {type(value).__name__} {value!r:.80}")
    if len(value) > limit:
        raise ConfigError(f"{field}: {len(value)} characters, at most {limit} ({rule})")
    if pattern is not None and not pattern.fullmatch(value):
        raise ConfigError(f"{field}: {value!r:.80} is not {rule}")


def check_cluster_name(name: Any) -> None:
    rule = f"a DNS label of at most {MAX_NAME} characters (lowercase letters, digits and '-', starting with a letter)"
    _check("cluster.name", name, DNS_LABEL, rule, MAX_NAME)


def check_gcloud_fields(cluster) -> None:
    """`cluster.project`, `cluster.zone` and `cluster.runtime_version` (when set)."""
    _check("cluster.project", cluster.project, PROJECT_ID, "a Google Cloud project id (6-30 of a-z 0-9 -)", 30)
    _check("cluster.zone", cluster.zone, ZONE, "a Google Cloud zone such as us-west4-a", 63)
    if cluster.runtime_version is not None:
        _check("cluster.runtime_version", cluster.runtime_version, TOKEN, "a TPU runtime version", 128)


def check_options(options: dict) -> None:
    """Every key of `cluster.options` known, every value within its rule."""
    for key, value in options.items():
        field = f"cluster.options.{key}"
        if key not in OPTION_RULES:
            raise ConfigError(f"{field}: unknown option (known: {', '.join(sorted(OPTION_RULES))})")
        pattern, rule, limit = OPTION_RULES[key]
        if key in FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{field}: expected {rule}, got {value!r:.80}")
            continue
        _check(field, value, pattern, rule, limit)
        control = CONTROL.search(value.replace("\n", "") if key == "install" else value)
        if control:
            raise ConfigError(f"{field}: contains the control character {control.group()!r}; expected {rule}")


def check_cluster(cluster, launcher: str) -> None:
    """All launch-relevant fields of `cluster` for `launcher`, before any plan is made."""
    check_cluster_name(cluster.name)
    check_options(dict(cluster.options))
    if launcher in ("gcloud", "xpk"):
        if not cluster.project or not cluster.zone:
            field = "project" if not cluster.project else "zone"
            raise ConfigError(f"cluster.{field}: not set; the {launcher} launcher needs it")
        check_gcloud_fields(cluster)

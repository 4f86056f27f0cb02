"""Before `jdistill launch` creates paid resources: no placeholder left in the config, and a yes from the user.

The shipped `tpu_configs/` name a project, bucket, GKE cluster, Slurm account and image that are not anybody's
(`PLACEHOLDERS`); a launch (not a `--dry-run`) whose config or overrides still hold one of them as a whole word is
refused in one line naming the key. Then the user confirms on a terminal; `--yes` skips the question, and without
a terminal (CI, a pipe) and without `--yes` the launch is refused rather than run unasked.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

from jdistill.errors import ConfigError, UserError

# The placeholder words of the shipped configs (whole words inside a value: gs://my-bucket/x, ghcr.io/my-org/x).
PLACEHOLDERS = ("my-gcp-project", "my-bucket", "my-xpk-cluster", "my-account", "my-org", "my-project")
_WORD = re.compile(r"[A-Za-z0-9_-]+")


class NotConfirmedError(UserError):
    """The user did not confirm a launch that creates resources."""


def _strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{key}[{index}]")


def find_placeholder(config: dict) -> tuple[str, str] | None:
    """(dotted key, placeholder word) of the first string value of `config` holding a placeholder word."""
    for key, text in _strings(config, ""):
        found = next((word for word in _WORD.findall(text) if word in PLACEHOLDERS), None)
        if found:
            return key, found
    return None


def check_no_placeholders(config: dict) -> None:
    found = find_placeholder(config)
    if found:
        key, word = found
        raise ConfigError(
            f"{key}: {word!r} is a placeholder of the example configs; set your own value (in the config or as "
            f"{key}=VALUE) before launching, or print the commands with --dry-run"
        )


def confirm(summary: str, *, yes: bool, stdin=None, stdout=None) -> None:
    """Ask `summary` + "[y/N]" on the terminal; `yes`: do not ask. Refused without a terminal, or on no."""
    if yes:
        return
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if not stdin.isatty():
        raise NotConfirmedError(
            "this launch creates paid resources and stdin is not a terminal to confirm on; pass --yes to "
            "launch without asking, or --dry-run to print the commands"
        )
    stdout.write(f"{summary}\nCreate these resources? [y/N] ")
    stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise NotConfirmedError("launch not confirmed; nothing was created")

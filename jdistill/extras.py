"""Optional dependencies (the `[project.optional-dependencies]` extras of pyproject.toml), checked before use.

A command that needs a package a plain `pip install` does not bring (libtpu for `jdistill compile` on a TPU
topology, torch for `jdistill bench train-step`) calls `require` first, so a missing package is one line naming
the extra that brings it, not an ImportError deep inside JAX or a traceback from the benchmark.
"""

from __future__ import annotations

import importlib.util

from jdistill.errors import UserError


class MissingExtraError(UserError):
    """A command needs a package from an optional extra that is not installed."""


def installed(module: str) -> bool:
    """Whether `module` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require(module: str, extra: str, needed_for: str, alternative: str = "") -> None:
    """Raise a one-line `MissingExtraError` unless `module` is installed: what needs it and the extra to install
    (from a checkout: `pip install -e ".[EXTRA]"`), or `alternative` (e.g. a flag that avoids it)."""
    if installed(module):
        return
    instead = f", or {alternative}" if alternative else ""
    raise MissingExtraError(
        f"{needed_for} needs {module}, which is not installed: install the {extra!r} extra "
        f'(pip install -e ".[{extra}]" in a checkout of jdistill){instead}'
    )

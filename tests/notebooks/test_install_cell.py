"""The notebooks' install cell installs jdistill from this repository, never a registry's `jdistill`: the checkout
the notebook runs in, else the git URL the user sets, else a one-line error."""

import ast
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _install_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    return next(source for source in code if "pip" in source)


def _run(cell: str, monkeypatch, cwd: Path, url: str | None) -> list[str]:
    """The pip command the cell runs with jdistill not installed (nothing is installed)."""
    calls: list[list[str]] = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jdistill" else find_spec(n, *a))
    monkeypatch.setattr(subprocess, "check_call", lambda command: calls.append(command))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.chdir(cwd)
    if url is None:
        monkeypatch.delenv("JDISTILL_GIT_URL", raising=False)
    else:
        monkeypatch.setenv("JDISTILL_GIT_URL", url)
    exec(compile(cell, "install-cell", "exec"), {})
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_installs_the_checkout_or_the_git_url(notebook, monkeypatch, tmp_path):
    cell = _install_cell(notebook)
    assert "JDISTILL_GIT_URL" in cell and "registry" in cell  # the cell says where jdistill comes from, and why
    command = _run(cell, monkeypatch, ROOT / "notebooks", url="https://example.org/me/jdistill.git")
    assert command[-2:] == ["-e", str(ROOT)]  # inside the checkout the URL is not needed
    command = _run(cell, monkeypatch, tmp_path, url="https://example.org/me/jdistill.git@dev")
    assert command[-1] == "git+https://example.org/me/jdistill.git@dev"
    with pytest.raises(RuntimeError, match="JDISTILL_GIT_URL"):
        _run(cell, monkeypatch, tmp_path, url=None)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_installs_jdistill_from_a_registry(notebook):
    """No code cell holds the bare package name "jdistill" except to ask whether it is installed (`find_spec`)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        asked = {
            id(call.args[0])
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and call.args
            and getattr(call.func, "attr", getattr(call.func, "id", None)) == "find_spec"
        }
        bare = [
            n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "jdistill" and id(n) not in asked
        ]
        assert not bare, "".join(cell["source"])[:200]

"""A newcomer's first hour (issue 13): missing extras, `--version`, progress and the summary table, as one-line
messages a new user can act on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import jdistill
from jdistill.cli import main

ROOT = Path(__file__).parents[2]


def _without(monkeypatch, *hidden: str) -> None:
    """Make `hidden` modules look uninstalled to `importlib.util.find_spec` (and so to `jdistill.extras`)."""
    find_spec = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_compile_without_libtpu_names_the_tpu_extra(monkeypatch, capsys):
    _without(monkeypatch, "libtpu")
    monkeypatch.setattr("jdistill.scale.compile.run_aot", lambda *a, **k: pytest.fail("compiled without libtpu"))
    code = main(["compile", "--config", str(ROOT / "tpu_configs" / "v5e-16.yaml")])
    err = _one_line_error(capsys)
    assert code == 2 and "libtpu" in err and '".[tpu]"' in err


def test_tpu_extra_brings_libtpu_and_readme_says_so():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith(("jax[tpu]", "libtpu")) for dep in extras["tpu"])
    compile_lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "jdistill compile" in line]
    assert compile_lines
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[tpu]"' in readme


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"jdistill {jdistill.__version__}"


def test_bench_train_step_without_torch_names_the_bench_extra_and_no_torch(monkeypatch, capsys):
    _without(monkeypatch, "torch")
    monkeypatch.setattr("jdistill.bench.train_step.run", lambda **k: pytest.fail("benchmarked without torch"))
    code = main(["bench", "train-step", "--steps", "1"])
    err = _one_line_error(capsys)
    assert code == 2 and "'bench' extra" in err and "--no-torch" in err


def test_bench_llm_kd_without_trl_names_the_bench_extra(monkeypatch, capsys):
    _without(monkeypatch, "trl")
    monkeypatch.setattr("jdistill.bench.llm_kd.run", lambda **k: pytest.fail("benchmarked without trl"))
    code = main(["bench", "llm-kd", "--steps", "1"])
    err = _one_line_error(capsys)
    assert code == 2 and "trl" in err and "'bench' extra" in err

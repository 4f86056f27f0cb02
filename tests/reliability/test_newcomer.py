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
    lines = (ROOT / "README.md").read_text().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith('pip install -e ".[tpu]"')]
    assert at and "jdistill compile" in lines[at[0] + 1]  # the install line sits where compile is shown


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


def _stage(run_dir: Path, name: str, *steps: str) -> None:
    (run_dir / name / "checkpoints").mkdir(parents=True)
    for step in steps:
        (run_dir / name / "checkpoints" / step).mkdir()


def test_head_gates_default_stage_is_one_with_a_checkpoint(tmp_path):
    from jdistill.eval.head_gating import checkpointed_stages, choose_stage

    (tmp_path / "teacher").mkdir()  # a teacher read from init_from: scored, no checkpoint
    _stage(tmp_path, "student_kd", "3")
    _stage(tmp_path, "student_scratch", "3")
    _stage(tmp_path, "student_dino", "3.orbax-checkpoint-tmp-17")  # killed during its first save
    (tmp_path / "summary.json").write_text('{"teacher": {}, "student_scratch": {}, "student_kd": {}}')
    assert checkpointed_stages(tmp_path) == ["student_scratch", "student_kd"]
    assert choose_stage(tmp_path, None) == "student_scratch"
    _stage(tmp_path / "trained", "teacher", "6")
    _stage(tmp_path / "trained", "student_kd", "3")
    assert choose_stage(tmp_path / "trained", None) == "teacher"


def test_head_gates_missing_stage_lists_the_stages(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    _stage(tmp_path, "teacher", "6")
    _stage(tmp_path, "student_kd", "3")
    code = main(["analyze", "head-gates", "--run-dir", str(tmp_path), "--stage", "student_scratch"])
    err = _one_line_error(capsys)
    assert code == 2 and "--stage student_scratch" in err and err.endswith("teacher, student_kd")


def test_head_gates_shows_progress_over_its_three_fits(monkeypatch, capsys):
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.eval import head_gating
    from jdistill.eval.head_gating import analyze_head_gates
    from jdistill.models import ModelConfig, Transformer

    def fit(graphdef, params, batches, init_logits, *, steps, bar, **kwargs):  # the steps, without the fitting
        for _ in range(steps):
            bar.update(1)
        return init_logits

    monkeypatch.setattr(head_gating, "fit_gate_logits", fit)
    monkeypatch.setattr(head_gating, "_nll", lambda *args: 0.0)

    config = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32, max_seq_len=8)
    tokens = jnp.arange(2 * 9).reshape(2, 9) % 32
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    analyze_head_gates(Transformer(config, rngs=nnx.Rngs(0)), [batch], steps=4, progress=True)
    err = capsys.readouterr().err
    assert "head gates" in err and "12/12" in err


def test_step_bar_shows_compilation_and_leaves_it_out_of_the_rate():
    import io
    import time

    from jdistill.progress import StepBar

    out = io.StringIO()
    bar = StepBar(total=100, initial=10, desc="teacher", file=out, mininterval=0)
    assert "teacher (compiling)" in out.getvalue()
    time.sleep(0.5)  # the first step: compiling
    bar.update(1)
    for _ in range(4):
        time.sleep(0.01)
        bar.update(1)
    meter = bar.format_dict
    bar.close()
    assert meter["n"] == 15 and meter["n"] - meter["initial"] == 4  # the rate counts the 4 steps after compiling
    assert meter["elapsed"] < 0.4
    assert meter["rate"] > 20  # 4 steps in ~0.04 s; with the compile step counted it would be under 10 steps/s
    assert out.getvalue().replace("\r", "\n").splitlines()[-1].startswith("teacher: ")


def _classifier(accuracy, **extra):
    return dict(accuracy=accuracy, nll=0.41, ece=0.031, count=360, params=12_345, wall_seconds=12.5, **extra)


def _table(summary) -> dict[str, dict[str, str]]:
    """{stage: {column: cell}} of `summary_table` (columns are separated by two spaces or more)."""
    import re

    from jdistill.eval.report import summary_table

    header, _, *rows = [re.split(r"\s{2,}", line.strip()) for line in summary_table(summary).splitlines()]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_summary_table_shows_each_recipes_headline_metrics():
    dino = _table(
        {
            "student_scratch": _classifier(0.91),
            "student_dino": _classifier(0.09, linear_probe_accuracy=0.87, knn_accuracy=0.84),
            "wall_seconds": 30.0,
            "recipe": "dino",
        }
    )
    assert list(dino) == ["student_scratch", "student_dino"]  # the summary.json keys, in order
    assert dino["student_dino"]["probe acc"] == "0.8700" and dino["student_dino"]["k-NN acc"] == "0.8400"
    assert dino["student_dino"]["nll"] == dino["student_dino"]["ece"] == dino["student_dino"]["accuracy"] == "-"
    assert dino["student_scratch"]["accuracy"] == "0.9100" and dino["student_scratch"]["probe acc"] == "-"
    lm = dict(accuracy=0.3, nll=1.9, ece=0.01, perplexity=6.1, bits_per_byte=2.5, params=9, wall_seconds=3.0)
    lm_table = _table({"teacher": lm, "student_kd": dict(lm, perplexity=7.7), "data": "pystdlib_text"})
    assert list(lm_table["student_kd"]) == ["stage", "params", "perplexity", "bits/byte", "wall s"]
    assert lm_table["student_kd"]["perplexity"] == "7.700" and lm_table["teacher"]["bits/byte"] == "2.5000"
    adr = _table({"teacher": _classifier(0.95), "student_adr": _classifier(0.93, robust_accuracy=0.61)})
    assert adr["student_adr"]["robust acc"] == "0.6100" and adr["teacher"]["robust acc"] == "-"
    assert adr["student_adr"]["accuracy"] == "0.9300" and adr["student_adr"]["ece"] == "0.0310"
    from jdistill.eval.report import summary_table

    assert summary_table({"wall_seconds": 1.0, "recipe": "kd"}) == "(no stage was evaluated)"


def test_cache_teacher_shows_progress_over_the_windows(tmp_path, capsys):
    import numpy as np

    from jdistill.train.teacher_cache import CacheSettings, write_cache
    from tests.recipes.test_cached_topk import _teacher_and_student, _windows

    (graphdef, params), _ = _teacher_and_student()
    windows = _windows(tmp_path)
    ids = np.arange(len(windows))
    capsys.readouterr()
    write_cache(graphdef, params, windows, ids, tmp_path / "c", CacheSettings(2, 1.0, "float16"), split="train",
                metadata={}, progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "teacher cache" in err and f"{len(ids)}/{len(ids)}" in err


def test_train_prints_its_run_directory_first(tmp_path, data_dir, monkeypatch, capsys):
    def first_stage(name, *args, **kwargs):
        raise KeyboardInterrupt  # stop before any training: the line must already be out

    monkeypatch.setattr("jdistill.train.job.run_stage", first_stage)
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "run.progress=true", "run.tensorboard=false"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"jdistill: run directory {run_dir}"

"""`jdistill bench moe` at toy size: every contender timed, the ratios follow from the times, the JSON written, and
bad arguments are one-line errors (argparse's, or a ConfigError: exit 2 without a traceback)."""

import json

import pytest

from jdistill.bench import moe
from jdistill.bench.moe import CONTENDERS, run
from jdistill.cli import build_parser
from jdistill.errors import ConfigError


def test_a_tiny_run_reports_every_contender_and_consistent_ratios(tmp_path):
    path = tmp_path / "moe.json"
    lines = []
    results = run((32,), d_model=16, experts=4, top_k=2, expert_dim=8, repeats=1, json_path=path, printer=lines.append)
    (row,) = results["rows"]
    assert set(row["tokens_per_s"]) == set(CONTENDERS) and all(v > 0 for v in row["tokens_per_s"].values())
    assert row["moe_over_dense"] == pytest.approx(row["ms"]["moe"] / row["ms"]["dense"])
    assert row["one_hot_over_moe"] == pytest.approx(row["ms"]["one_hot"] / row["ms"]["moe"])
    assert row["moe_over_dense_cpu"] == pytest.approx(row["cpu_ms"]["moe"] / row["cpu_ms"]["dense"])
    assert set(row["cpu_ms"]) == set(CONTENDERS) and results["load_average"] >= 0
    assert results["settings"]["dense_hidden"] == 2 * 8  # top_k * expert_dim: the same active parameters
    assert results["goal_met"] == (row["moe_over_dense"] <= 1.5)
    assert json.loads(path.read_text())["rows"][0]["tokens"] == 32
    assert any("moe/dense" in line for line in lines) and "goal" in lines[-1]


@pytest.mark.parametrize("args", [["--tokens", "0"], ["--shared-dim", "-1"], ["--experts", "x"]])
def test_bad_arguments_are_one_line_parser_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "moe", *args])
    assert exit_info.value.code == 2 and args[0] in capsys.readouterr().err.strip().splitlines()[-1]


def test_top_k_above_the_experts_is_a_config_error_before_any_compute(monkeypatch):
    monkeypatch.setattr(moe, "run", lambda *a, **k: pytest.fail("ran"))
    args = build_parser().parse_args(["bench", "moe", "--experts", "8", "--top-k", "9"])
    with pytest.raises(ConfigError, match=r"--top-k 9: at most --experts \(8\)"):
        args.func(args)

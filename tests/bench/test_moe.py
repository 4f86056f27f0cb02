"""`jdistill bench moe` at toy size: every contender timed, the ratios follow from the times, the JSON written, and
bad arguments are one-line errors."""

import json
import subprocess
import sys

import pytest

from jdistill.bench.moe import CONTENDERS, run


def test_a_tiny_run_reports_every_contender_and_consistent_ratios(tmp_path):
    path = tmp_path / "moe.json"
    lines = []
    results = run((32,), d_model=16, experts=4, top_k=2, expert_dim=8, repeats=1, json_path=path, printer=lines.append)
    (row,) = results["rows"]
    assert set(row["tokens_per_s"]) == set(CONTENDERS) and all(v > 0 for v in row["tokens_per_s"].values())
    assert row["moe_over_dense"] == pytest.approx(row["ms"]["moe"] / row["ms"]["dense"])
    assert row["one_hot_over_moe"] == pytest.approx(row["ms"]["one_hot"] / row["ms"]["moe"])
    assert results["settings"]["dense_hidden"] == 2 * 8  # top_k * expert_dim: the same active parameters
    assert results["goal_met"] == (row["moe_over_dense"] <= 1.5)
    assert json.loads(path.read_text())["rows"][0]["tokens"] == 32
    assert any("moe/dense" in line for line in lines) and "goal" in lines[-1]


@pytest.mark.parametrize("args", [["--top-k", "9"], ["--tokens", "0"], ["--shared-dim", "-1"]])
def test_bad_arguments_are_one_line_errors(args):
    """Exit 2, no traceback, the last line names the argument (argparse prints its usage above it)."""
    done = subprocess.run(
        [sys.executable, "-m", "jdistill.cli", "bench", "moe", "--experts", "8", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert args[0] in done.stderr.strip().splitlines()[-1]

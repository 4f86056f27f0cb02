"""Every claim end to end at `--quick` size through the CLI (seconds per job on a quiet machine; `-m slow`): the
jobs run, every number is finite, summary.json and the PNG are written. The verdicts mean nothing at this size."""

import json
import math

import pytest

from jdistill.cli import main
from jdistill.repro import all_claims


@pytest.mark.slow
@pytest.mark.parametrize("name", list(all_claims()))
def test_claim_runs_quick(name, tmp_path, data_dir, capsys):
    out = tmp_path / name
    assert main(["repro", name, "--quick", "--seeds", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claim"] == name and summary["seeds"] == [0] and summary["settings"]["quick"] is True
    assert summary["numbers"] and all(math.isfinite(n["mean"]) for n in summary["numbers"].values())
    assert (out / f"{name}.png").stat().st_size > 10_000
    assert ("NOT HELD" in capsys.readouterr().out) == (not summary["held"])

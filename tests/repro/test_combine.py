"""`--combine`: runs of one claim over disjoint seeds merged into one summary equal to a single run over all seeds.

Broken on purpose: the verdict kept from the first run instead of recomputed on the merged means, a repeated seed
let through, runs with other settings merged."""

import json

import pytest

from jdistill.cli import main
from jdistill.errors import ConfigError, RunDirError
from jdistill.repro.combine import combine_runs
from jdistill.repro.runner import run_claim
from tests.repro.test_runner import FAKE


def test_combined_runs_equal_one_run_over_every_seed(tmp_path):
    whole = run_claim(FAKE, tmp_path / "whole", seeds=[0, 1, 2])
    run_claim(FAKE, tmp_path / "a", seeds=[0])  # alone: not held (seed 0 has a < b)
    run_claim(FAKE, tmp_path / "b", seeds=[1, 2])
    combined = combine_runs(FAKE, [tmp_path / "a", tmp_path / "b" / "summary.json"], tmp_path / "out")
    assert combined["seeds"] == [0, 1, 2] and combined["numbers"] == whole["numbers"]
    assert combined["held"] is whole["held"] is True and combined["held_per_seed"] == [False, True, True]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["combined_from"][0] == str(tmp_path / "a")
    assert (tmp_path / "out" / "fake.png").is_file()


def test_runs_that_do_not_fit_together_are_refused_before_writing(tmp_path):
    run_claim(FAKE, tmp_path / "a", seeds=[0])
    run_claim(FAKE, tmp_path / "b", seeds=[0, 1])
    run_claim(FAKE, tmp_path / "c", seeds=[2], params={"scale": 2.0})
    for runs, message in (
        (["a", "b"], "seed 0 is already in an earlier run"),
        (["a", "c"], "differ from"),
        (["a"], "expected two or more runs"),
        (["a", "missing"], "no such summary"),
    ):
        with pytest.raises((ConfigError, RunDirError), match=message):
            combine_runs(FAKE, [tmp_path / r for r in runs], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_combine_on_the_command_line_needs_one_claim_and_out(tmp_path, capsys):
    assert main(["repro", "pskd", "--combine", f"{tmp_path}/a,{tmp_path}/b"]) == 2
    err = capsys.readouterr().err
    assert "name one claim and --out DIR" in err and len(err.strip().splitlines()) == 1

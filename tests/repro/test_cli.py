"""`jdistill repro`: the list in the issue's order, and bad input as one line with exit status 2 before training.

Broken on purpose: the registry reordered, the name check dropped (a KeyError traceback), seeds accepting
duplicates."""

import pytest

from jdistill.cli import main

ISSUE_ORDER = [
    "label-noise-xi",
    "teacher-guidance",
    "born-again",
    "pskd",
    "random-teacher",
    "attention-sink",
    "activations",
    "gated-deltanet",
    "gkd-on-policy",
    "adr",
    "multi-exit",
    "quantized",
    "head-gating",
    "diffusion-few-step",
]


def test_list_names_every_claim_in_the_issue_order(capsys):
    assert main(["repro", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ISSUE_ORDER


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["repro", "born-agian"], "unknown claim (did you mean born-again?)"),
        (["repro"], "name a claim"),
        (["repro", "pskd", "noise=0.3"], "pskd has no parameter 'noise'"),
        (["repro", "label-noise-xi", "noise=2"], "noise=2.0: expected a label-noise rate in [0, 1]"),
        (["repro", "label-noise-xi", "setting=linaer"], "setting=linaer: expected one of both, net, linear"),
        (["repro", "pskd", "student.train.stepz=3"], "student.train.stepz"),
        (["repro", "diffusion-few-step", "methods=dmd9"], "methods=dmd9: expected comma-separated students"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds", ["0,0", "-1", "a"])
def test_bad_seeds_are_an_argparse_error(seeds, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["repro", "pskd", "--seeds", seeds])
    assert exit_.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_all_runs_every_claim_into_its_own_folder(monkeypatch, tmp_path, capsys):
    """`repro all`: every claim of the registry, one folder each under --out, a table and verdict each."""
    import dataclasses

    import jdistill.repro
    from tests.repro.test_runner import FAKE

    claims = {name: dataclasses.replace(FAKE, name=name) for name in ("fake-a", "fake-b")}
    monkeypatch.setattr(jdistill.repro, "all_claims", lambda: claims)
    assert main(["repro", "all", "--quick", "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-a", "fake-b"]
    assert (tmp_path / "fake-b" / "summary.json").is_file() and (tmp_path / "fake-a" / "fake-a.png").is_file()
    assert capsys.readouterr().out.count("HELD") == 2

"""Causal head gating on a trained run: fits, labels every head, writes the table and the heat map."""

import numpy as np

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.nn.head_gates import HEAD_ROLES
from jdistill.train import run_teacher_student
from tests.train.test_lm_job import TINY_LM


def test_analyze_head_gates_on_a_run(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    run_teacher_student(load_config("lm_kd", TINY_LM), run_dir)
    assert main(["analyze", "head-gates", "--run-dir", str(run_dir), "--steps", "5", "--batches", "2"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.strip() and line.split()[-1] in HEAD_ROLES]
    assert len(rows) == 1 * 2  # TINY_LM: one layer, two heads
    gates = np.array([[float(x) for x in row.split()[2:5]] for row in rows])
    assert np.all((gates > 0) & (gates < 1))
    assert (run_dir / "head_gates_teacher.png").stat().st_size > 0


def test_analyze_head_gates_errors(tmp_path, capsys):
    assert main(["analyze", "head-gates", "--run-dir", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err

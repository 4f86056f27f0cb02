"""`jdistill bench data`: the pipeline and step figures and their ratio, at a tiny size."""

import json

import pytest

from jdistill.cli import main


@pytest.mark.slow  # compiles the llm_kd-size teacher and student (~30 s on 2 cores)
def test_bench_data_reports_pipeline_and_step_tokens_per_second(data_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "data", "--batch", "2", "--seq", "16", "--vocab", "256", "--batches", "5", "--steps", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pipeline_tokens_per_s"] > 0 and result["step_tokens_per_s"] > 0
    assert result["ratio"] == result["pipeline_tokens_per_s"] / result["step_tokens_per_s"]
    assert "tokens/s" in capsys.readouterr().out

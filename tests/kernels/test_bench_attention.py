"""`jdistill bench attention` on CPU: XLA paths only, with the ratios and the reason printed."""

import json

from jdistill.bench.attention import BenchCase, flops, run
from jdistill.cli import main


def test_cpu_bench_compares_the_xla_paths_and_says_why(tmp_path):
    lines = []
    rows = run(
        seqs=[32],
        head_dims=(16,),
        causal=(True,),
        modes=("fwd+bwd",),
        heads=2,
        kv_heads=1,
        repeats=1,
        json_path=tmp_path / "rows.jsonl",
        printer=lines.append,
    )
    assert [row["impl"] for row in rows] == ["xla_sdpa", "xla"]
    assert "XLA paths only" in lines[0] and "cuDNN needs a GPU" in lines[0]
    assert all(row["seconds"] > 0 and row["error"] is None for row in rows)
    assert rows[1]["vs_xla"] == 1.0 and rows[0]["vs_cudnn"] == 1.0
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])["mode"] == "fwd+bwd"


def test_flop_count_halves_when_causal_and_backward_is_two_and_a_half_forwards():
    full = flops(BenchCase(seq=1024, head_dim=128, causal=False, mode="fwd"), batch=1, heads=1)
    assert full == 4 * 1024 * 1024 * 128
    assert flops(BenchCase(seq=1024, head_dim=128, causal=True, mode="fwd+bwd"), 1, 1) == full * 0.5 * 3.5


def test_cli_subcommand_runs(capsys):
    assert (
        main(
            [
                "bench",
                "attention",
                "--seq",
                "16",
                "--head-dim",
                "8",
                "--heads",
                "1",
                "--repeats",
                "1",
                "--mode",
                "fwd",
                "--causal",
                "no",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "vs_cudnn" in out and "xla_sdpa" in out

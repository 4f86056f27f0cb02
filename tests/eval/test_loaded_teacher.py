"""A teacher read from `teacher.init_from=hf:DIR` is scored like a trained stage (perplexity and bits per byte in
the summary and the table) and leaves `RUN_DIR/teacher/samples.jsonl`, which `jdistill generate --checkpoint
RUN_DIR/teacher` reproduces from that same checkpoint."""

import dataclasses
import json

from flax import nnx

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.eval.report import summary_table
from jdistill.hf import save_pretrained
from jdistill.models import Transformer
from jdistill.train.job import run_job
from tests.eval.conftest import SAMPLE_TOKENS, TINY_LM_RUN
from tests.eval.test_generate_cli import QWEN3_STYLE


def test_a_teacher_from_hf_is_scored_sampled_and_generates(tmp_path, data_dir, capsys):
    save_pretrained(Transformer(dataclasses.replace(QWEN3_STYLE, max_seq_len=256), rngs=nnx.Rngs(5)), tmp_path / "hf")
    config = load_config("lm_kd", [*TINY_LM_RUN, f"teacher.init_from=hf:{tmp_path / 'hf'}", "student.train.steps=1"])
    run_dir = tmp_path / "run"
    summary = run_job(config, run_dir, progress=False)
    teacher = summary["teacher"]
    assert (
        teacher["bits_per_byte"] > 0
        and teacher["perplexity"] > 1
        and teacher["count"] == summary["student_kd"]["count"]
    )
    assert "teacher" in summary_table(summary)
    records = [json.loads(line) for line in (run_dir / "teacher" / "samples.jsonl").read_text().splitlines()]
    assert records and {r["stage"] for r in records} == {"teacher"}
    prompts = [flag for record in records for flag in ("--prompt", record["prompt"])]
    capsys.readouterr()
    code = main(
        [
            "generate",
            "--checkpoint",
            str(run_dir / "teacher"),
            *prompts,
            "--max-new-tokens",
            str(SAMPLE_TOKENS),
            "--jsonl",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [json.loads(line)["tokens"] for line in out.splitlines()] == [r["tokens"] for r in records]

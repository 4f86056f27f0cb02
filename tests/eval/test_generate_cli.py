"""`jdistill generate` on a trained run's stage and on an hf:DIR checkpoint: the completions are `generate`'s
(the same as the stage's samples.jsonl), and bad input is one line with exit status 2."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from jdistill.cli import main
from jdistill.hf import save_pretrained
from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import generate
from jdistill.text import BytesTokenizer
from tests.eval.conftest import SAMPLE_TOKENS

QWEN3_STYLE = ModelConfig(
    kind="lm",
    num_layers=1,
    d_model=16,
    num_heads=2,
    mlp_dim=32,
    mlp="glu",
    activation="silu",
    mlp_bias=False,
    gate="none",
    qk_norm=True,
    vocab_size=256,
    max_seq_len=24,
)


def _generate(capsys, *args):
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _records(out):
    return [json.loads(line) for line in out.splitlines()]


def test_generate_from_a_run_stage_reproduces_its_samples(lm_run, capsys):
    run_dir, _ = lm_run
    samples = [json.loads(line) for line in (run_dir / "student_kd" / "samples.jsonl").read_text().splitlines()]
    prompts = [flag for record in samples for flag in ("--prompt", record["prompt"])]
    code, out, err = _generate(
        capsys, "--checkpoint", str(run_dir / "student_kd"), *prompts, "--max-new-tokens", str(SAMPLE_TOKENS), "--jsonl"
    )
    assert code == 0, err
    got = _records(out)
    assert [r["tokens"] for r in got] == [r["tokens"] for r in samples]
    assert [r["completion"] for r in got] == [r["completion"] for r in samples]
    assert "s compiling), " in err and "tokens/s" in err and err.count("\n") == 1


def test_generate_from_hf_dir_prints_generates_greedy_completions(tmp_path, capsys):
    model = Transformer(QWEN3_STYLE, rngs=nnx.Rngs(3))
    save_pretrained(model, tmp_path / "hf")
    BytesTokenizer().save(tmp_path / "hf")  # the checkpoint's own tokenizer.json: one id per byte
    texts = ["def f(x):", "import"]
    args = ["--checkpoint", f"hf:{tmp_path / 'hf'}", "--max-new-tokens", "6"]
    args += [flag for text in texts for flag in ("--prompt", text)]
    code, out, err = _generate(capsys, *args, "--jsonl")
    assert code == 0, err
    padded = np.zeros((2, 9), np.int32)
    for row, text in enumerate(texts):
        padded[row, : len(text)] = list(text.encode())
    want = np.asarray(generate(model, padded, [9, 6], max_new_tokens=6)).tolist()
    for record, text, row in zip(_records(out), texts, want, strict=True):
        assert record["prompt"] == text
        assert record["tokens"] == row[: row.index(0) if 0 in row else len(row)]
    code, plain, _ = _generate(capsys, *args, "--tokenizer", "bytes")
    assert code == 0 and plain == "\n\n".join(r["completion"] for r in _records(out)) + "\n"


def test_self_speculative_generation_prints_the_same_greedy_completions(tmp_path, capsys):
    deeper = dataclasses.replace(QWEN3_STYLE, num_layers=3)
    save_pretrained(Transformer(deeper, rngs=nnx.Rngs(5)), tmp_path / "hf")
    args = ["--checkpoint", f"hf:{tmp_path / 'hf'}", "--tokenizer", "bytes", "--jsonl", "--max-new-tokens", "7"]
    args += ["--prompt", "def f(x):", "--prompt", "import"]
    _, plain, _ = _generate(capsys, *args)
    code, fast, err = _generate(capsys, *args, "--draft-exit", "1", "--draft-len", "3")
    assert code == 0, err
    assert fast == plain and "drafts from block 1:" in err and "accepted" in err


def test_sampling_depends_on_the_seed_only(tmp_path, capsys):
    save_pretrained(Transformer(QWEN3_STYLE, rngs=nnx.Rngs(3)), tmp_path / "hf")
    args = ["--checkpoint", f"hf:{tmp_path / 'hf'}", "--tokenizer", "bytes", "--prompt", "x = ", "--jsonl"]
    args += ["--max-new-tokens", "8", "--temperature", "2.0", "--top-k", "50"]
    runs = [_records(_generate(capsys, *args, "--seed", seed)[1])[0]["tokens"] for seed in ("1", "1", "2")]
    assert runs[0] == runs[1] != runs[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/nonexistent/run/student_kd"], "no such directory"),
        (["--checkpoint", "hf:/nonexistent/hf"], "config.json: no such file"),
        (["--checkpoint", "{hf}", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
        (["--checkpoint", "{hf}"], "tokenizer.json: not found"),  # no --tokenizer: the checkpoint's own, absent
        (
            ["--checkpoint", "{hf}", "--tokenizer", "bytes", "--prompt", "x" * 25],
            "--prompt[0]: the prompt is 25 tokens",
        ),
        (["--checkpoint", "{hf}", "--tokenizer", "bytes", "--top-p", "1.5"], "--top-p"),
        (["--checkpoint", "{hf}", "--tokenizer", "bytes", "--draft-exit", "1"], "exit_layer: expected a block number"),
        (["--checkpoint", "{hf}", "--draft-exit", "1", "--top-k", "5"], "--draft-exit: self-speculative decoding"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    save_pretrained(Transformer(QWEN3_STYLE, rngs=nnx.Rngs(0)), tmp_path / "hf")
    args = [a.replace("{hf}", f"hf:{tmp_path / 'hf'}") for a in args]
    if "--prompt" not in args:
        args += ["--prompt", "hello"]
    code, out, err = _generate(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("jdistill: error: ") and err.count("\n") == 1 and message in err, err


def test_a_missing_stage_or_run_is_one_line(lm_run, tmp_path, capsys):
    run_dir, _ = lm_run
    (tmp_path / "loose").mkdir()
    for checkpoint, message in [
        (run_dir / "student_scratch", "no such directory"),  # the run had no baseline
        (tmp_path / "loose", "not a run directory"),
    ]:
        code, _, err = _generate(capsys, "--checkpoint", str(checkpoint), "--prompt", "x")
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_token_outside_the_models_vocabulary_is_one_line(tmp_path, capsys):
    small = dataclasses.replace(QWEN3_STYLE, vocab_size=ord("x"))  # ids 0 .. 119: "w" fits, "x" does not
    save_pretrained(Transformer(small, rngs=nnx.Rngs(0)), tmp_path / "hf")
    code, _, err = _generate(capsys, "--checkpoint", f"hf:{tmp_path / 'hf'}", "--tokenizer", "bytes", "--prompt", "wx")
    assert code == 2 and "--prompt[0]: token id 120 is outside the model's vocabulary 120" in err, err

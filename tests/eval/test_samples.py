"""samples.jsonl: the held-out prompts are the documents' openings (or their prompts), the file of each LM stage
holds exactly what `generate` returns for them, and a prompt that does not fit fails before training."""

import json

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.eval.samples import default_prompts, encode_prompts, sample_records
from jdistill.models.generate import generate
from jdistill.text import load_tokenizer
from jdistill.train import inputs
from jdistill.train.job import run_job
from jdistill.train.restore import load_stage
from tests.eval.conftest import SAMPLE_TOKENS, TINY_LM_RUN

EOS = 0


def test_default_prompts_of_packed_rows_take_the_prompt_of_prompt_completion_documents():
    """Packed rows: documents start where position is 0; a document whose first target is not scored (a
    prompt/completion pair) gives its prompt, i.e. its tokens up to the first scored target."""
    inputs_ = np.array([[1, 21, 22, 23, 24, 2, 31, 32], [41, 42, 43, EOS, 51, 52, EOS, 0]], np.int32)
    segments = np.array([[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 0]], np.int32)
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2], [5, 6, 7, 8, 0, 1, 2, 0]], np.int32)  # row 2 starts mid-document
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1, 0, 0]], bool)
    batch = {"inputs": inputs_, "mask": mask, "segment_ids": segments, "positions": positions}
    prompts = default_prompts([batch], EOS, count=4, length=4)
    assert [p.tolist() for p in prompts] == [[1, 21, 22], [2, 31, 32], [51, 52]]  # prompts; a short text, no EOS
    assert [p.tolist() for p in default_prompts([batch], EOS, length=2)] == [[1, 21], [2, 31], [51, 52]]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("stage", ["teacher", "student_kd"])
def test_each_lm_stage_writes_what_generate_returns_for_the_held_out_prompts(lm_run, stage):
    run_dir, config = lm_run
    records = _read(run_dir / stage / "samples.jsonl")
    tokenizer = load_tokenizer("bytes")
    prompts = default_prompts(inputs.eval_batches(config.data, "lm"), tokenizer.eos_id)
    assert len(records) == len(prompts) >= 2
    model, _ = load_stage(run_dir, stage)
    for record, prompt in zip(records, prompts, strict=True):
        generated = np.asarray(generate(model, prompt[None], max_new_tokens=SAMPLE_TOKENS))[0].tolist()
        stops = generated.index(EOS) if EOS in generated else len(generated)
        assert record["tokens"] == generated[:stops] and record["stopped"] == (EOS in generated)
        assert record["completion"] == tokenizer.decode(record["tokens"])
        assert record["prompt"] == tokenizer.decode(prompt) and record["stage"] == stage
    assert not list((run_dir / stage).glob("*.tmp"))


def test_stages_answer_the_same_prompts_and_differ(lm_run):
    run_dir, _ = lm_run
    teacher, student = (_read(run_dir / stage / "samples.jsonl") for stage in ("teacher", "student_kd"))
    assert [r["prompt"] for r in teacher] == [r["prompt"] for r in student]
    assert [r["tokens"] for r in teacher] != [r["tokens"] for r in student]


def test_configured_prompts_are_encoded_and_checked_against_max_seq_len():
    tokenizer = load_tokenizer("bytes")
    (ids,) = encode_prompts(tokenizer, ["def f():"], max_len=8)
    assert ids.tolist() == list(b"def f():")
    with pytest.raises(ConfigError, match=r"run.sample_prompts\[1\]: the prompt is 9 tokens.*max_seq_len 8"):
        encode_prompts(tokenizer, ["ok", "def f(x):"], max_len=8)


def test_a_prompt_longer_than_max_seq_len_fails_before_the_run_starts(tmp_path, data_dir):
    config = load_config(
        "lm_kd",
        TINY_LM_RUN + ["data.seq_len=16", "teacher.model.max_seq_len=16", "run.sample_prompts=[" + "x" * 17 + "]"],
    )
    with pytest.raises(ConfigError, match=r"sample_prompts\[0\].*17 tokens.*max_seq_len 16"):
        run_job(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # found before the run directory is written


class _Bytes:
    bos_id, eos_id, pad_id, vocab_size = None, EOS, EOS, 256

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_completions_are_cut_after_the_first_eos_and_padded_right(monkeypatch):
    seen = {}

    def fake_generate(model, prompt_ids, prompt_lengths, *, max_new_tokens, **sampling):
        seen.update(ids=np.asarray(prompt_ids), lengths=np.asarray(prompt_lengths), new=max_new_tokens)
        return np.array([[104, EOS, 105, EOS], [104, 105, 33, 33]], np.int32)

    monkeypatch.setattr("jdistill.eval.samples.generate", fake_generate)
    prompts = [np.array([1, 2, 3], np.int32), np.array([4], np.int32)]
    records = sample_records(None, _Bytes(), prompts, max_new_tokens=4, stage="s")
    assert seen["ids"].tolist() == [[1, 2, 3], [4, EOS, EOS]] and seen["lengths"].tolist() == [3, 1]
    assert seen["new"] == 4
    assert [(r["tokens"], r["stopped"], r["completion"]) for r in records] == [
        ([104], True, "h"),
        ([104, 105, 33, 33], False, "hi!!"),
    ]
    assert [r["prompt"] for r in records] == ["\x01\x02\x03", "\x04"] and {r["stage"] for r in records} == {"s"}

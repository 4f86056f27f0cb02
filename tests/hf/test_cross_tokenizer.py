"""Distillation across tokenizers (`distill.objective: uld`, a teacher checkpoint with its own tokenizer): the teacher
reads its own tokens of the text (`jdistill.train.teacher_tokens`, `jdistill.data.teacher_view`), never the
student's ids."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.hf import save_pretrained
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.text import load_tokenizer, train_tokenizer
from jdistill.train import run_job
from jdistill.train.job import checked_recipe, prepared_config
from tests.data.lm_fixtures import write_jsonl
from tests.data.test_teacher_view import documents
from tests.hf.tiny import tiny_config, tiny_model

TEACHER_VOCAB = 400
JOB_YAML = """
teacher: {model: {kind: lm}}
student: {model: {kind: lm, vocab_size: 256}}
distill: {recipe: kd}
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(root, overrides): text documents as files:, byte-level data for the student, and an HF teacher folder
    whose tokenizer is a BPE of 400 ids trained here."""
    root = tmp_path_factory.mktemp("cross")
    for split, count in (("train", 80), ("test", 12)):
        write_jsonl(root / "raw" / split / "data.jsonl", documents(count))
    texts = [record["text"] for record in documents(80)]
    tokenizer = train_tokenizer(texts, TEACHER_VOCAB, root / "teacher")
    save_pretrained(tiny_model(tiny_config("qwen3", vocab_size=416, num_layers=2)), root / "teacher")
    assert 300 < tokenizer.vocab_size <= TEACHER_VOCAB
    (root / "job.yaml").write_text(JOB_YAML)
    overrides = [
        f"data.name=files:{root}/raw/{{split}}/*.jsonl",
        "data.seq_len=32",
        "data.eval_batch_size=8",
        "data.eval_max_batches=null",  # the whole test split: both tokenisations score the same text
        f"teacher.init_from=hf:{root / 'teacher'}",
        "distill.objective=uld",
        "distill.temperature=1.0",
        "run.progress=false",
        "run.plot=false",
        "run.tensorboard=false",
        "run.baseline=false",
        "run.sample_tokens=0",
    ]
    overrides += [
        f"student.{key}={value}"
        for key, value in (
            ("model.d_model", 16),
            ("model.num_layers", 1),
            ("model.mlp_dim", 32),
            ("model.num_heads", 2),
            ("train.steps", 3),
            ("train.warmup_steps", 0),
            ("train.eval_every", 3),
            ("train.checkpoint_every", 3),
            ("train.batch_size", 4),
        )
    ]
    return root, overrides


def test_the_teacher_reads_its_own_tokens_and_is_scored_on_the_same_text(job, tmp_path, data_dir):
    root, overrides = job
    config = load_config(str(root / "job.yaml"), overrides)
    recipe = checked_recipe(prepared_config(config))
    assert recipe.teacher_seq_len is not None and recipe.teacher_seq_len % 8 == 0
    summary = run_job(config, tmp_path / "run", progress=False)
    teacher, student = summary["teacher"], summary["student_kd"]
    # the same held-out text, in bytes and in the teacher's tokens: every target but each document's first token
    texts = [record["text"] for record in documents(12)]
    tokenizer = load_tokenizer(str(root / "teacher"))
    first = [len(tokenizer.decode(tokenizer.encode(text)[:1]).encode()) for text in texts]
    total = sum(len(text.encode()) for text in texts)
    assert student["bytes"] == total - len(texts) and teacher["bytes"] == total - sum(first)
    assert teacher["count"] == sum(len(tokenizer.encode(text)) for text in texts)  # its tokens + EOS - first
    assert np.isfinite(student["nll"]) and np.isfinite(teacher["bits_per_byte"])


def test_without_uld_another_tokenizer_is_refused(job, data_dir):
    root, overrides = job
    with pytest.raises(ConfigError, match=r"distil across tokenizers with distill\.objective=uld"):
        checked_recipe(
            prepared_config(load_config(str(root / "job.yaml"), [*overrides, "distill.objective=forward_kl"]))
        )


def test_a_teacher_seq_len_needs_uld():
    with pytest.raises(ValueError, match="teacher_seq_len: a teacher with its own tokenizer needs objective uld"):
        KnowledgeDistillation(objective="forward_kl", teacher_seq_len=16)


def lm(vocab: int, seed: int) -> Transformer:
    config = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=vocab)
    return Transformer(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("vocab_chunk", [0, 8])
def test_an_identity_alignment_is_the_plain_uld_loss_and_unaligned_positions_drop_out(vocab_chunk):
    student, teacher = lm(48, 0), lm(64, 1)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 48, (2, 12)).astype(np.int32)
    batch = {
        "inputs": inputs,
        "targets": rng.integers(0, 48, (2, 12)).astype(np.int32),
        "mask": np.ones((2, 12), bool),
    }
    shared = dict(objective="uld", temperature=1.0, vocab_chunk=vocab_chunk, real_vocab=(48, 64))
    plain = KnowledgeDistillation(**shared)
    own = KnowledgeDistillation(**shared, teacher_seq_len=16)
    view = {
        "teacher_inputs": np.pad(inputs, [(0, 0), (0, 4)]),
        "teacher_segment_ids": np.pad(np.ones((2, 12), np.int32), [(0, 0), (0, 4)]),
        "teacher_positions": np.pad(np.tile(np.arange(12, dtype=np.int32), (2, 1)), [(0, 0), (0, 4)]),
        "teacher_index": np.tile(np.arange(12, dtype=np.int32), (2, 1)),
        "teacher_aligned": np.ones((2, 12), bool),
    }

    def loss(recipe, batch):
        run = nnx.jit(lambda s, t, b: recipe.loss(s, t, (), b, jax.random.key(0))[0])
        return run(student, teacher, batch)

    total, count = loss(plain, batch)
    own_total, own_count = loss(own, {**batch, **view})
    np.testing.assert_allclose(float(own_total), float(total), rtol=1e-5)
    assert float(own_count) == float(count) == 24
    # unaligned positions leave the loss: the same as masking them
    view["teacher_aligned"] = np.tile(np.arange(12) % 3 != 0, (2, 1))
    own_total, own_count = loss(own, {**batch, **view})
    masked = dict(batch, mask=view["teacher_aligned"])
    total, count = loss(plain, masked)
    np.testing.assert_allclose(float(own_total), float(total), rtol=1e-5)
    assert float(own_count) == float(count) == 16
    # the teacher reads teacher_inputs, not the student's ids
    other = dict(view, teacher_inputs=np.pad(rng.integers(0, 64, (2, 12)).astype(np.int32), [(0, 0), (0, 4)]))
    assert abs(float(loss(own, {**batch, **other})[0]) - float(loss(plain, masked)[0])) > 1e-4
    # a shifted alignment reads other teacher positions: a different loss
    view["teacher_aligned"] = np.ones((2, 12), bool)
    view["teacher_index"] = np.tile(np.minimum(np.arange(12) + 1, 11).astype(np.int32), (2, 1))
    shifted, _ = loss(own, {**batch, **view})
    total, _ = loss(plain, batch)
    assert abs(float(shifted) - float(total)) > 1e-4

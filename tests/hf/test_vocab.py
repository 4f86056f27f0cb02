"""Vocabulary policy: distributions over the real vocabulary only (padded rows excluded, against numpy), the dense and
chunked KD paths agree, mismatched shapes raise, and tokenizer / vocabulary mismatches are one-line errors."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from jdistill import losses
from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.hf import vocab_policy
from jdistill.hf.tokenizer_facts import TokenizerFacts
from jdistill.recipes import KnowledgeDistillation
from jdistill.recipes.registry import build_recipe
from jdistill.text import train_tokenizer
from tests.hf.tiny import tiny_config, tiny_model, token_batch


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_forward_kl(student, teacher, vocab, temperature):
    """KL(p_t || p_s) per position over the first `vocab` rows of each, float64."""
    log_ps = log_softmax(np.asarray(student, np.float64)[..., :vocab] / temperature)
    log_pt = log_softmax(np.asarray(teacher, np.float64)[..., :vocab] / temperature)
    return (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)


def logits(shape, seed):
    return 3.0 * np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_kd_compares_the_real_vocabulary_only():
    student, teacher = logits((2, 5, 264), 0), logits((2, 5, 272), 1)
    labels = np.random.default_rng(2).integers(0, 256, (2, 5))
    mask = np.random.default_rng(3).random((2, 5)) > 0.3
    recipe = KnowledgeDistillation(temperature=2.0, real_vocab=(256, 256))
    (total, count), _ = recipe.loss_from_logits(student, teacher, labels, mask)
    expected = numpy_forward_kl(student, teacher, 256, 2.0)[mask].sum() * 4.0  # T^2
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(count) == mask.sum()
    student[..., 256:], teacher[..., 256:] = 50.0, -50.0  # padding rows: no effect on the divergence
    (again, _), _ = recipe.loss_from_logits(student, teacher, labels, mask)
    np.testing.assert_allclose(float(again), expected, rtol=1e-5)


def test_without_a_known_vocabulary_the_smaller_one_is_shared():
    student, teacher = logits((3, 260), 4), logits((3, 270), 5)
    (total, _), _ = KnowledgeDistillation(temperature=1.0).loss_from_logits(student, teacher, np.zeros(3, int), None)
    np.testing.assert_allclose(float(total), numpy_forward_kl(student, teacher, 260, 1.0).sum(), rtol=1e-5)


@pytest.mark.parametrize("label_weight", [0.0, 0.5])
def test_chunked_kd_cuts_the_heads_like_the_dense_path(label_weight):
    student = tiny_model(tiny_config("llama", num_layers=1, vocab_size=264), seed=1)
    teacher = tiny_model(tiny_config("qwen3", num_layers=2, vocab_size=272), seed=2)
    tokens = token_batch(256, (2, 7))
    batch = {"inputs": tokens, "targets": np.roll(tokens, -1, 1), "mask": np.ones((2, 7), bool)}
    dense = KnowledgeDistillation(temperature=2.0, label_weight=label_weight, real_vocab=(256, 256))
    chunked = dataclasses.replace(dense, vocab_chunk=4)
    (d_total, d_count), (c_total, c_count) = (
        nnx.jit(lambda s, t, recipe=recipe: recipe.loss(s, t, (), batch, None)[0])(student, teacher)
        for recipe in (dense, chunked)
    )
    np.testing.assert_allclose(float(c_total), float(d_total), rtol=1e-5)
    assert float(c_count) == float(d_count) == 14
    s_logits, t_logits = np.asarray(student(tokens).logits), np.asarray(teacher(tokens).logits)
    expected = numpy_forward_kl(s_logits, t_logits, 256, 2.0).sum() * 4
    if label_weight:  # the student's CE over all its rows, padding included
        expected += (
            label_weight
            * -np.take_along_axis(log_softmax(s_logits.astype(np.float64)), batch["targets"][..., None], -1).sum()
        )
    np.testing.assert_allclose(float(d_total), expected, rtol=1e-5)


def test_mismatched_logit_shapes_raise_instead_of_broadcasting():
    with pytest.raises(ValueError, match="same shape"):
        losses.forward_kl(logits((2, 5, 10), 0), logits((1, 5, 10), 1))
    with pytest.raises(ValueError, match="share the vocab axis"):
        losses.reverse_kl(logits((2, 5, 10), 0), logits((2, 5, 12), 1))
    with pytest.raises(ValueError, match="leading shape"):
        losses.real_vocab_logits(logits((2, 5, 10), 0), logits((2, 1, 10), 1))
    with pytest.raises(ValueError, match="exceeds the logits' rows"):
        losses.real_vocab_logits(logits((2, 10), 0), logits((2, 12), 1), (11, 11))
    recipe = KnowledgeDistillation(real_vocab=(8, 8))
    with pytest.raises(ValueError, match="leading shape"):
        recipe.loss_from_logits(logits((2, 5, 10), 0), logits((1, 5, 10), 1), np.zeros((2, 5), int), None)


def test_uld_is_an_objective_across_vocabulary_sizes():
    student, teacher = logits((2, 4, 10), 6), logits((2, 4, 13), 7)
    recipe = build_recipe(load_config("lm_kd", ["distill.objective=uld", "distill.label_weight=0"]).distill)
    (total, _), _ = recipe.loss_from_logits(student, teacher, np.zeros((2, 4), int), None)
    ps, pt = np.exp(log_softmax(student.astype(np.float64))), np.exp(log_softmax(teacher.astype(np.float64)))
    ps = np.pad(-np.sort(-ps, -1), [(0, 0), (0, 0), (0, 3)])
    np.testing.assert_allclose(float(total), 0.5 * np.abs(ps - -np.sort(-pt, -1)).sum(), rtol=1e-5)


def lm_config(*overrides):
    return load_config("lm_kd", list(overrides))


def test_config_allows_padded_vocabularies_unless_full():
    lm_config("teacher.model.vocab_size=272")  # shared (default): the job checks the tokenizer
    with pytest.raises(ConfigError, match=r"student\.model\.vocab_size expected equal to teacher\.model\.vocab_size"):
        lm_config("teacher.model.vocab_size=272", "distill.vocab=full")
    with pytest.raises(ConfigError, match=r"distill\.vocab expected one of 'shared', 'full'"):
        lm_config("distill.vocab=padded")


def test_the_job_gives_kd_the_tokenizer_vocabulary():
    config = lm_config("teacher.model.vocab_size=272", "student.model.vocab_size=264")
    recipe = vocab_policy.with_real_vocab(build_recipe(config.distill), config)
    assert recipe.real_vocab == (256, 256)  # bytes: 256 ids
    config = lm_config("distill.vocab=full")
    assert vocab_policy.with_real_vocab(build_recipe(config.distill), config).real_vocab is None


def test_a_tokenizer_larger_than_an_embedding_is_refused():
    config = lm_config("teacher.model.vocab_size=200", "student.model.vocab_size=200")
    with pytest.raises(ConfigError, match=r"data.tokenizer bytes: its vocabulary \(256 ids\) exceeds student"):
        vocab_policy.check_vocabularies(config, build_recipe(config.distill))


def test_recipes_that_compare_rows_need_equal_vocabularies():
    config = lm_config("teacher.model.vocab_size=272", "distill.recipe=cached_topk")
    with pytest.raises(ConfigError, match=r"recipe 'cached_topk' compares teacher and student logits row by row"):
        vocab_policy.check_vocabularies(config, build_recipe(config.distill))


BPE = TokenizerFacts("hf:/models/teacher", 300, "a" * 64)


def test_a_teacher_with_another_tokenizer_needs_uld(monkeypatch):
    monkeypatch.setattr(vocab_policy, "_checkpoint_tokenizers", lambda config, roles: {"teacher": BPE})
    config = lm_config("teacher.model.vocab_size=320", "teacher.init_from=hf:/models/teacher")
    with pytest.raises(ConfigError) as info:
        vocab_policy.check_vocabularies(config, build_recipe(config.distill))
    message = str(info.value)
    assert "teacher.init_from hf:/models/teacher: its tokenizer (300 ids, aaaaaaaaaaaa)" in message
    assert "is not data.tokenizer bytes (256 ids, bytes-v1)" in message and "objective=uld" in message
    config = lm_config("teacher.model.vocab_size=320", "teacher.init_from=hf:/models/teacher", "distill.objective=uld")
    assert vocab_policy.check_vocabularies(config, build_recipe(config.distill)) == (256, 300)


def test_a_student_checkpoint_must_use_the_data_tokenizer_even_under_uld(monkeypatch):
    monkeypatch.setattr(vocab_policy, "_checkpoint_tokenizers", lambda config, roles: {"student": BPE})
    config = lm_config("student.init_from=hf:/models/student", "distill.objective=uld")
    with pytest.raises(ConfigError, match=r"student\.init_from hf:/models/student: its tokenizer"):
        vocab_policy.check_vocabularies(config, build_recipe(config.distill))


def test_checkpoint_tokenizers_are_compared_by_fingerprint(tmp_path):
    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.sep)\n"] * 10
    tokenizer = train_tokenizer(texts, 300, tmp_path / "teacher")
    teacher = f"teacher.init_from=hf:{tmp_path / 'teacher'}"
    config = lm_config("teacher.model.vocab_size=320", teacher)
    with pytest.raises(ConfigError) as info:
        vocab_policy.check_vocabularies(config, build_recipe(config.distill))
    message = str(info.value)
    assert (
        f"its tokenizer ({tokenizer.vocab_size} ids, {tokenizer.fingerprint[:12]}) is not data.tokenizer bytes"
        in message
    )
    config = lm_config("teacher.model.vocab_size=320", teacher, "distill.objective=uld")
    assert vocab_policy.check_vocabularies(config, build_recipe(config.distill)) == (256, tokenizer.vocab_size)
    same = [f"data.tokenizer=hf:{tmp_path / 'teacher'}", "teacher.model.vocab_size=320", "student.model.vocab_size=304"]
    config = lm_config(teacher, *same)
    real = (tokenizer.vocab_size, tokenizer.vocab_size)
    assert vocab_policy.with_real_vocab(build_recipe(config.distill), config).real_vocab == real


def test_jdistill_train_refuses_a_too_small_embedding_in_one_line(tmp_path, capsys):
    from jdistill import cli

    overrides = ["teacher.model.vocab_size=300", "student.model.vocab_size=200"]
    assert cli.main(["train", "--config", "lm_kd", "--run-dir", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its vocabulary (256 ids) exceeds student.model.vocab_size (200" in err
    assert not (tmp_path / "run").exists()

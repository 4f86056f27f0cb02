"""`data.tokenizer: bpe:VOCAB`: a BPE tokenizer trained on the data source on first use, cached by (source, VOCAB)."""

import dataclasses

import pytest

from jdistill.configs import load_config
from jdistill.data import corpus_tokenizer
from jdistill.errors import ConfigError
from jdistill.text import load_tokenizer


@pytest.fixture
def corpus(tmp_path):
    """A small `files:` source (two Python-like text files) and its data dir."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(2):
        body = "".join(f"def function_{i}(x):\n    return x * {i} + {index}\n\n" for i in range(200))
        (texts / f"module_{index}.txt").write_text(body)
    return f"files:{texts}/*.txt", tmp_path / "data"


def test_bpe_spec_trains_once_and_is_cached(corpus, monkeypatch):
    source, data_dir = corpus
    first = corpus_tokenizer.resolve_tokenizer("bpe:300", source, data_dir)
    assert first.startswith(str(data_dir / "tokenizers"))
    tokenizer = load_tokenizer(first)
    assert tokenizer.kind == "bpe" and 256 < tokenizer.vocab_size <= 300
    assert tokenizer.decode(tokenizer.encode("def function_7(x):")) == "def function_7(x):"
    assert len(tokenizer.encode("    return x * 7")) < len("    return x * 7")  # merges learned from the corpus
    trained = []
    monkeypatch.setattr("jdistill.text.train_tokenizer", lambda *args: trained.append(args))
    assert corpus_tokenizer.resolve_tokenizer("bpe:300", source, data_dir) == first  # the cache, no training
    assert trained == []
    other = corpus_tokenizer.resolve_tokenizer("bpe:280", source, str(data_dir))
    assert other != first and len(trained) == 1  # another vocabulary: another folder, trained


def test_other_specs_are_returned_unchanged(corpus):
    source, data_dir = corpus
    for spec in ("bytes", "hf:/some/dir", "/some/dir"):
        assert corpus_tokenizer.resolve_tokenizer(spec, source, data_dir) == spec
    assert not (data_dir / "tokenizers").exists()


@pytest.mark.parametrize("spec", ["bpe:", "bpe:abc", "bpe:12", "bpe:-5"])
def test_malformed_bpe_spec_is_a_one_line_error(corpus, spec):
    source, data_dir = corpus
    with pytest.raises(ConfigError, match=r"data.tokenizer .*expected bpe:VOCAB with VOCAB an integer >= 259"):
        corpus_tokenizer.resolve_tokenizer(spec, source, data_dir)


def test_a_config_is_resolved_once_into_a_plain_directory(corpus):
    source, data_dir = corpus
    config = load_config("llm_kd", [f"data.name={source}", f"data.dir={data_dir}", "data.tokenizer=bpe:300"])
    resolved = corpus_tokenizer.with_corpus_tokenizer(config)
    assert resolved.data.tokenizer == corpus_tokenizer.resolve_tokenizer("bpe:300", source, data_dir)
    data = dataclasses.replace(config.data, tokenizer=resolved.data.tokenizer)
    assert resolved == dataclasses.replace(config, data=data)
    assert corpus_tokenizer.with_corpus_tokenizer(resolved) is resolved

"""Text fixtures: the embedded corpus as strings and a small byte-level BPE tokenizer trained on part of it."""

from pathlib import Path

import pytest

from jdistill.data import load_source
from jdistill.text import train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


def corpus_texts(data_dir, split: str) -> list[str]:
    source = load_source("pystdlib_text", split, data_dir)
    return [source[index]["bytes"].tobytes().decode("utf-8", errors="replace") for index in range(len(source))]


@pytest.fixture(scope="session")
def train_texts(data_dir):
    return corpus_texts(data_dir, "train")


@pytest.fixture(scope="session")
def test_texts(data_dir):
    return corpus_texts(data_dir, "test")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, train_texts):
    """A 2048-id byte-level BPE tokenizer trained on every 8th training file (about a second)."""
    return train_tokenizer(train_texts[::8], 2048, tmp_path_factory.mktemp("bpe") / "tokenizer")

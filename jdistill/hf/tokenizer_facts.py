"""What the vocabulary checks need to know of a tokenizer: its vocab size and fingerprint (`jdistill.text`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TokenizerFacts:
    """spec: as written in the config ("bytes", "hf:DIR", DIR); vocab_size: ids it can emit; fingerprint: sha256
    of its canonical tokenizer.json ("bytes-v1" for bytes)."""

    spec: str
    vocab_size: int
    fingerprint: str


def tokenizer_facts(spec: str) -> TokenizerFacts:
    """Facts of the tokenizer `spec` (`jdistill.text.load_tokenizer`; its errors are one-line `TokenizerError`s)."""
    from jdistill.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    return TokenizerFacts(spec, int(tokenizer.vocab_size), str(tokenizer.fingerprint))


def checkpoint_tokenizer(directory: str | Path) -> TokenizerFacts | None:
    """Facts of the tokenizer saved with an HF checkpoint folder, None when it has no tokenizer.json."""
    directory = Path(str(directory).removeprefix("hf:"))
    if not (directory / "tokenizer.json").is_file():
        return None
    return tokenizer_facts(f"hf:{directory}")


def data_tokenizer(data_config: object) -> str:
    """The data config's tokenizer spec (`data.tokenizer`)."""
    return str(getattr(data_config, "tokenizer", "bytes"))

"""Tokenizers and chat templates: `load_tokenizer("bytes" | "hf:DIR" | "DIR")`, `train_tokenizer` (byte-level BPE)
and the `Tokenizer` interface every kind implements. See docs/text.md."""

from jdistill.text.errors import TokenizerError
from jdistill.text.load import load_tokenizer
from jdistill.text.tokenizer import BytesTokenizer, Tokenizer
from jdistill.text.train import train_tokenizer

__all__ = ["BytesTokenizer", "Tokenizer", "TokenizerError", "load_tokenizer", "train_tokenizer"]

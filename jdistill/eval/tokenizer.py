"""The tokenizer of a run: `data.tokenizer` ("bytes" by default) loaded with `jdistill.text.load_tokenizer`."""

from __future__ import annotations

import numpy as np


def run_tokenizer(data_config):
    """The Tokenizer that made the run's token ids (scores bits per byte, decodes samples)."""
    return load_tokenizer(getattr(data_config, "tokenizer", "bytes"))


def load_tokenizer(spec: str):
    """`jdistill.text.load_tokenizer` (the byte-level one alone until that module lands)."""
    try:
        from jdistill.text import load_tokenizer as load
    except ImportError:  # TEMPORARY: jdistill.text (the "text" helper) is not merged yet
        from jdistill.errors import ConfigError

        if spec != "bytes":
            raise ConfigError(f"tokenizer {spec!r}: only 'bytes' is available in this build") from None
        return _Bytes()
    return load(spec)


class _Bytes:
    """TEMPORARY stand-in for jdistill.text's byte-level tokenizer (same ids: the UTF-8 bytes; 0 = EOS)."""

    kind, vocab_size, bos_id, eos_id, pad_id, fingerprint = "bytes", 256, None, 0, 0, "bytes-v1"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in np.asarray(ids).reshape(-1) if int(i) != 0).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.ones(256, np.int32)
        lengths[0] = 0
        return lengths

"""`load_tokenizer(spec)`: "bytes", "hf:DIR" or "DIR" (a directory with tokenizer.json) -> `Tokenizer`."""

from pathlib import Path

from jdistill.text.bpe import TOKENIZER_FILE, load_directory
from jdistill.text.errors import TokenizerError
from jdistill.text.tokenizer import BytesTokenizer, Tokenizer

HF_PREFIX = "hf:"
BYTES = "bytes"


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer a spec names: `bytes` (one id per byte), `hf:DIR` or `DIR` (a Hugging Face tokenizer
    directory: tokenizer.json + tokenizer_config.json, e.g. a checkpoint's). Nothing is downloaded.

    `TokenizerError` (one line) for an unknown spec, a missing directory or tokenizer.json, or malformed files.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TokenizerError(f"tokenizer spec must be a non-empty string (bytes, hf:DIR or DIR), got {spec!r}")
    if spec == BYTES:
        return BytesTokenizer()
    explicit = spec.startswith(HF_PREFIX)
    directory = Path(spec[len(HF_PREFIX) :] if explicit else spec).expanduser()
    if explicit and not spec[len(HF_PREFIX) :]:
        raise TokenizerError("tokenizer spec 'hf:' names no directory: expected hf:DIR")
    if not directory.exists():
        if explicit or "/" in spec or spec.startswith("."):
            raise TokenizerError(f"tokenizer directory {directory} does not exist (spec {spec!r})")
        raise TokenizerError(
            f"unknown tokenizer {spec!r}: expected {BYTES}, {HF_PREFIX}DIR or DIR (a directory with "
            f"{TOKENIZER_FILE}; nothing is downloaded, so a hub name needs its files copied here)"
        )
    if not directory.is_dir():
        raise TokenizerError(f"tokenizer spec {spec!r} is a file; give the directory that holds {TOKENIZER_FILE}")
    return load_directory(directory, name=spec)

"""How many UTF-8 bytes each token of a `tokenizers` tokenizer stands for, read from its tokenizer.json.

- Byte-level BPE (GPT-2, Llama 3, Qwen; a `ByteLevel` decoder): a token's string is written in the ByteLevel
  alphabet, one character per byte, so its byte length is its number of characters. Exact.
- SentencePiece-style (a `ByteFallback` or `Metaspace` decoder; Llama 2, Gemma): `<0xNN>` is one byte and `▁` a
  space. Exact except the one space such tokenizers prepend to a text.
- Anything else (e.g. WordPiece): the length of each token decoded alone (approximate).
Special tokens are 0; other added tokens are the UTF-8 length of their content.
"""

import functools
import re
from typing import Any

import numpy as np
import tokenizers

_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """The ByteLevel alphabet (GPT-2's `bytes_to_unicode`) inverted: character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shift)
            shift += 1
    return {character: byte for byte, character in characters.items()}


def _component_types(section: Any) -> set[str]:
    """The `type`s of a tokenizer.json section and of the members of a `Sequence` in it."""
    if not isinstance(section, dict):
        return set()
    types = {section.get("type", "")}
    for key in ("decoders", "pretokenizers", "normalizers"):
        for member in section.get(key) or []:
            types |= _component_types(member)
    return types


def byte_level_kind(spec: dict) -> str:
    """ "byte_level", "sentencepiece" or "other" for a parsed tokenizer.json."""
    decoders = _component_types(spec.get("decoder"))
    if "ByteLevel" in decoders:
        return "byte_level"
    if decoders & {"ByteFallback", "Metaspace"} or "Metaspace" in _component_types(spec.get("pre_tokenizer")):
        return "sentencepiece"
    return "other"


def token_byte_lengths(tokenizer: tokenizers.Tokenizer, spec: dict, vocab_size: int) -> np.ndarray:
    """int32 [vocab_size]: the UTF-8 bytes each id stands for (module docstring); 0 for special tokens and for ids
    no token has."""
    lengths = np.zeros(vocab_size, np.int32)
    kind = byte_level_kind(spec)
    alphabet = byte_level_alphabet()
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    for token, index in tokenizer.get_vocab(with_added_tokens=False).items():
        if index >= vocab_size or token in added:
            continue
        if kind == "byte_level":
            lengths[index] = sum(1 if character in alphabet else len(character.encode()) for character in token)
        elif kind == "sentencepiece":
            lengths[index] = 1 if _BYTE_FALLBACK.fullmatch(token) else len(token.replace("▁", " ").encode())
        else:
            lengths[index] = len(tokenizer.decode([index], skip_special_tokens=False).encode())
    for index, added_token in tokenizer.get_added_tokens_decoder().items():
        if index < vocab_size:
            lengths[index] = 0 if added_token.special else len(added_token.content.encode())
    return lengths

"""`Tokenizer`: the interface every tokenizer of jdistill has, whatever its kind, and the bytes tokenizer.

Callers never branch on the kind: ids, EOS/pad, per-token byte lengths (for bits per byte), chat rendering and the
assistant mask work the same for `bytes` (one id per UTF-8 byte) and `bpe` (a `tokenizers` tokenizer, see
`jdistill.text.bpe`). See docs/text.md.
"""

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jdistill.text import chat
from jdistill.text.errors import TokenizerError


class Tokenizer(abc.ABC):
    """Text <-> int32 ids, plus the facts training and evaluation need (EOS/pad ids, byte lengths, chat template).

    Attributes: `kind` ("bytes" | "bpe"), `name` (the spec it was loaded from), `vocab_size` (ids it can emit,
    added and special tokens included), `bos_id` (None when the tokenizer has none), `eos_id`, `pad_id` (the EOS
    unless a pad token is configured), `fingerprint` (identifies the id mapping), `chat_template` (Jinja2 text or
    None) and `chat_template_name` (where it came from, for error messages).
    """

    kind: str
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    fingerprint: str
    chat_template: str | None
    chat_template_name: str

    @abc.abstractmethod
    def encode(self, text: str, *, split_special_tokens: bool = False) -> np.ndarray:
        """int32 ids of `text`; no BOS/EOS is added.

        A special token written in the text (e.g. `<|im_end|>` in a rendered chat) becomes that token, as in
        transformers' `tokenizer(text, add_special_tokens=False)`; with `split_special_tokens=True` it is encoded
        as the plain text it is (for raw documents, where such strings are only text).
        """

    def encode_batch(self, texts: Sequence[str], *, split_special_tokens: bool = False) -> list[np.ndarray]:
        """`[encode(text, split_special_tokens=...) for text in texts]`, possibly in parallel."""
        return [self.encode(text, split_special_tokens=split_special_tokens) for text in texts]

    @abc.abstractmethod
    def decode(self, ids: Any) -> str:
        """The text of `ids` (special tokens skipped; invalid UTF-8 replaced by U+FFFD)."""

    @abc.abstractmethod
    def token_byte_lengths(self) -> np.ndarray:
        """int32 [vocab_size]: the UTF-8 bytes of text each id stands for; 0 for special tokens."""

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer files into `directory` (created if needed), each to a temporary name, then renamed."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(int32 ids [n], int64 [n, 2] character (start, end) of each token in `text`), ids as `encode`'s."""

    @abc.abstractmethod
    def template_variables(self) -> dict[str, str]:
        """Named special tokens a chat template sees (`bos_token`, `eos_token`, `pad_token`, `unk_token`)."""

    def _template(self) -> str:
        if self.chat_template is None:
            raise TokenizerError(
                f"tokenizer {self.name} has no chat template (tokenizer_config.json `chat_template` or "
                "chat_template.jinja); add one to render chats"
            )
        return self.chat_template

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False) -> str:
        """The chat as text, rendered by the chat template as `transformers.apply_chat_template(tokenize=False)`."""
        template = self._template()
        normalized = chat.normalize_messages(messages, f"chat for {self.chat_template_name}")
        return chat.render(
            template,
            self.chat_template_name,
            normalized,
            add_generation_prompt=add_generation_prompt,
            variables=self.template_variables(),
        )

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(int32 ids [n], bool assistant_mask [n]) of the rendered chat (no generation prompt).

        The ids are those of `encode(render_chat(messages))`, as `apply_chat_template(tokenize=True)` gives. The mask
        is True on every token that overlaps an assistant turn's span (its content and end-of-turn marker, see
        `chat.assistant_spans`). `TokenizerError` for a chat without an assistant turn.
        """
        template = self._template()
        normalized = chat.normalize_messages(messages, f"chat for {self.chat_template_name}")
        text, spans = chat.assistant_spans(template, self.chat_template_name, normalized, self.template_variables())
        ids, offsets = self.encode_with_offsets(text)
        return ids, spans_to_token_mask(offsets, spans, len(text))


def spans_to_token_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]], text_length: int) -> np.ndarray:
    """bool [n]: token i is True iff its characters overlap a span (a zero-width token counts by its position)."""
    covered = np.zeros(text_length + 1, np.int64)
    for start, end in spans:
        covered[start] += 1
        covered[end] -= 1
    inside = np.cumsum(covered)[:text_length] > 0  # inside[c]: character c is in a span
    prefix = np.concatenate([[0], np.cumsum(inside)])
    starts, ends = offsets[:, 0], offsets[:, 1]
    widths_in_span = prefix[np.maximum(ends, starts)] - prefix[starts]
    zero_width = ends <= starts
    at = np.clip(starts, 0, max(text_length - 1, 0))
    point_inside = inside[at] if text_length else np.zeros_like(starts, bool)
    return np.where(zero_width, point_inside, widths_in_span > 0)


class BytesTokenizer(Tokenizer):
    """One id per UTF-8 byte (vocab 256). Id 0 (the NUL byte, absent from text corpora) is the EOS and the pad;
    there is no BOS. Chats render with jdistill's ChatML template (`chat.CHATML_TEMPLATE`), its markers as bytes."""

    kind = "bytes"
    name = "bytes"
    vocab_size = 256
    bos_id = None
    eos_id = 0
    pad_id = 0
    fingerprint = "bytes-v1"
    chat_template = chat.CHATML_TEMPLATE
    chat_template_name = "bytes (built-in ChatML)"

    def encode(self, text: str, *, split_special_tokens: bool = False) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids: Any) -> str:
        values = np.asarray(ids, np.int64).reshape(-1)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise TokenizerError(f"bytes tokenizer: ids must be in [0, 255], got {values.min()}..{values.max()}")
        return values.astype(np.uint8).tobytes().replace(b"\0", b"").decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.ones(256, np.int32)
        lengths[self.eos_id] = 0
        return lengths

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        widths = np.fromiter((len(character.encode("utf-8")) for character in text), np.int64, len(text))
        character_of_byte = np.repeat(np.arange(len(text), dtype=np.int64), widths)
        return self.encode(text), np.stack([character_of_byte, character_of_byte + 1], axis=1).reshape(-1, 2)

    def template_variables(self) -> dict[str, str]:
        return {"eos_token": "\0", "pad_token": "\0"}

    def save(self, directory: str | os.PathLike) -> None:
        """An equivalent Hugging Face directory: byte-level BPE without merges, id b = byte b, EOS/pad the NUL byte
        (loaded back it is a `bpe` tokenizer with the same ids)."""
        from jdistill.text.bpe import byte_identity_tokenizer

        byte_identity_tokenizer().save(directory)

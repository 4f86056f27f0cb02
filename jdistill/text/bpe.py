"""`BPETokenizer`: a Hugging Face `tokenizers` tokenizer read from a checkpoint directory, behind `Tokenizer`.

A directory holds `tokenizer.json` (the id mapping: model, pre-tokenizer, decoder, added tokens) and, optionally,
`tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, `unk_token`, `chat_template`), a separate
`chat_template.jinja` (as newer transformers write it; it wins over the config's), `special_tokens_map.json`
(older checkpoints) and `config.json` (`eos_token_id` when no config names the EOS).
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from jdistill.text import byte_level
from jdistill.text.chat import CHATML_TEMPLATE
from jdistill.text.errors import TokenizerError
from jdistill.text.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
NAMED_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def canonical_sha256(json_text: str) -> str:
    """sha256 hex of a JSON document re-serialised with sorted keys, no whitespace and UTF-8 text: the same for
    any layout or key order of the same content."""
    canonical = json.dumps(json.loads(json_text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def fingerprint_of(backend: tokenizers.Tokenizer) -> str:
    """`canonical_sha256` of the tokenizer's JSON as the library writes it: equal for equal id mappings, and
    unchanged by a save and load."""
    return canonical_sha256(backend.to_str())


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The parsed JSON file; `TokenizerError` naming the file and the line for unreadable or invalid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TokenizerError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None


def _token_text(value: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with its named special tokens and chat template (kind "bpe", whatever its model)."""

    kind = "bpe"

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        name: str,
        tokens: dict[str, str],
        chat_template: str | None,
        chat_template_name: str,
        config: dict[str, Any] | None = None,
        eos_id: int | None = None,
    ) -> None:
        """`tokens`: named special tokens (NAMED_TOKENS keys) as text; `eos_id` is used when `tokens` has no EOS."""
        self.backend = backend
        self.name = name
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
        self.tokens = dict(tokens)
        ids = {key: self._id_of(key, text) for key, text in self.tokens.items()}
        if "eos_token" not in ids:
            if eos_id is None or not 0 <= eos_id < self.vocab_size:
                raise TokenizerError(
                    f"tokenizer {name}: no eos_token in {CONFIG_FILE} (nor eos_token_id in config.json); add one"
                )
            ids["eos_token"] = eos_id
            self.tokens["eos_token"] = backend.id_to_token(eos_id) or ""
        self.bos_id = ids.get("bos_token")
        self.eos_id = ids["eos_token"]
        self.pad_id = ids.get("pad_token", self.eos_id)
        self.fingerprint = fingerprint_of(backend)
        self.chat_template = chat_template
        self.chat_template_name = chat_template_name
        self.config = dict(config or {})
        self._byte_lengths: np.ndarray | None = None
        self._literal_backend: tokenizers.Tokenizer | None = None

    def _id_of(self, key: str, text: str) -> int:
        index = self.backend.token_to_id(text)
        if index is None:
            raise TokenizerError(f"tokenizer {self.name}: {key} {text!r} is not in the vocabulary of {TOKENIZER_FILE}")
        return index

    def _backend_for(self, split_special_tokens: bool) -> tokenizers.Tokenizer:
        """The backend, or (for `split_special_tokens`) a copy of it that encodes special-token text as text."""
        if not split_special_tokens:
            return self.backend
        if self._literal_backend is None:
            literal = tokenizers.Tokenizer.from_str(self.backend.to_str())
            literal.encode_special_tokens = True
            self._literal_backend = literal
        return self._literal_backend

    def encode(self, text: str, *, split_special_tokens: bool = False) -> np.ndarray:
        encoding = self._backend_for(split_special_tokens).encode(text, add_special_tokens=False)
        return np.asarray(encoding.ids, np.int32)

    def encode_batch(self, texts: Any, *, split_special_tokens: bool = False) -> list[np.ndarray]:
        encodings = self._backend_for(split_special_tokens).encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, np.int32) for encoding in encodings]

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.backend.encode(text, add_special_tokens=False)
        offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
        return np.asarray(encoding.ids, np.int32), offsets

    def decode(self, ids: Any) -> str:
        return self.backend.decode(np.asarray(ids, np.int64).reshape(-1).tolist(), skip_special_tokens=True)

    def token_byte_lengths(self) -> np.ndarray:
        if self._byte_lengths is None:
            spec = json.loads(self.backend.to_str())
            self._byte_lengths = byte_level.token_byte_lengths(self.backend, spec, self.vocab_size)
        return self._byte_lengths.copy()

    def template_variables(self) -> dict[str, str]:
        return dict(self.tokens)

    def save(self, directory: str | os.PathLike) -> None:
        """tokenizer.json and tokenizer_config.json (named tokens, chat template, the loaded config's other keys);
        a chat_template.jinja already in `directory` is rewritten too, so it cannot shadow the saved template."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {key: value for key, value in self.config.items() if key not in (*NAMED_TOKENS, "chat_template")}
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.update(self.tokens)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        write_text_atomic(directory / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        write_text_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        stale = directory / TEMPLATE_FILE
        if stale.exists():
            if self.chat_template is None:
                stale.unlink()
            else:
                write_text_atomic(stale, self.chat_template)


def byte_identity_tokenizer() -> BPETokenizer:
    """The bytes tokenizer as a `tokenizers` tokenizer: one token per byte (id = byte value, written in the
    ByteLevel alphabet), no merges, so it encodes and decodes exactly as `BytesTokenizer`; EOS and pad are id 0."""
    alphabet = {character: byte for character, byte in byte_level.byte_level_alphabet().items()}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=alphabet, merges=[]))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    nul = next(character for character, byte in alphabet.items() if byte == 0)
    return BPETokenizer(
        backend,
        name="bytes",
        tokens={"eos_token": nul, "pad_token": nul},
        chat_template=CHATML_TEMPLATE,
        chat_template_name="bytes (built-in ChatML)",
        config={"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False},
    )


def load_directory(directory: Path, name: str) -> BPETokenizer:
    """The tokenizer in `directory` (module docstring); `TokenizerError` naming the file for anything missing or
    malformed."""
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        hint = ""
        if (directory / "tokenizer.model").is_file():
            hint = (
                "; it has only a SentencePiece tokenizer.model: convert it once with transformers, "
                "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
            )
        raise TokenizerError(f"{path}: not found (a tokenizer directory needs {TOKENIZER_FILE}){hint}")
    read_json(path)  # a precise message for invalid JSON
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TokenizerError(f"{path}: not a tokenizers tokenizer file ({first_line})") from None
    config: dict[str, Any] = {}
    for file_name in (SPECIAL_TOKENS_FILE, CONFIG_FILE):  # the config wins over the older map
        if (directory / file_name).is_file():
            loaded = read_json(directory / file_name)
            if not isinstance(loaded, dict):
                raise TokenizerError(f"{directory / file_name}: expected a JSON object, got {type(loaded).__name__}")
            config.update(loaded)
    _add_declared_tokens(backend, config.get("added_tokens_decoder"), directory / CONFIG_FILE)
    tokens = {key: text for key in NAMED_TOKENS if (text := _token_text(config.get(key))) is not None}
    template, template_name = _chat_template(directory, config)
    return BPETokenizer(
        backend,
        name=name,
        tokens=tokens,
        chat_template=template,
        chat_template_name=template_name,
        config=config,
        eos_id=_model_eos_id(directory),
    )


def _add_declared_tokens(backend: tokenizers.Tokenizer, declared: Any, where: Path) -> None:
    """Add the tokens tokenizer_config.json's `added_tokens_decoder` ({id: {content, special, ...}}) declares and
    tokenizer.json lacks, as transformers does; each must land on its declared id, and a declared id that holds
    another token is an error."""
    if not declared:
        return
    if not isinstance(declared, dict):
        raise TokenizerError(f"{where}: added_tokens_decoder must be an object {{id: {{content, ...}}}}")
    for key, entry in sorted(declared.items(), key=lambda item: int(item[0]) if str(item[0]).isdigit() else -1):
        content = _token_text(entry)
        if not str(key).isdigit() or content is None:
            raise TokenizerError(f"{where}: added_tokens_decoder entry {key!r} needs an integer id and a content")
        index = int(key)
        existing = backend.token_to_id(content)
        if existing is None:
            flags = {name: entry[name] for name in ("single_word", "lstrip", "rstrip", "normalized") if name in entry}
            token = tokenizers.AddedToken(content, special=bool(entry.get("special", False)), **flags)
            backend.add_tokens([token])
            existing = backend.token_to_id(content)
        if existing != index:
            raise TokenizerError(
                f"{where}: added_tokens_decoder declares {content!r} as id {index}, but {TOKENIZER_FILE} gives it "
                f"id {existing}"
            )


def _chat_template(directory: Path, config: dict[str, Any]) -> tuple[str | None, str]:
    """(template text or None, its name for messages): chat_template.jinja, else the config's `chat_template` (a
    string, or a list of {name, template} whose "default" is taken)."""
    jinja_path = directory / TEMPLATE_FILE
    if jinja_path.is_file():
        try:
            return jinja_path.read_text(encoding="utf-8"), str(jinja_path)
        except (OSError, UnicodeDecodeError) as error:
            raise TokenizerError(f"{jinja_path}: cannot read ({error})") from None
    where = f"{directory / CONFIG_FILE}:chat_template"
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value, where
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        if isinstance(named.get("default"), str):
            return named["default"], f"{where}[default]"
    raise TokenizerError(f"{where}: expected a string or a list of {{name, template}} with a 'default' entry")


def _model_eos_id(directory: Path) -> int | None:
    """`eos_token_id` of the checkpoint's generation_config.json or config.json (the first of a list), if any."""
    for file_name in ("generation_config.json", "config.json"):
        path = directory / file_name
        if path.is_file():
            loaded = read_json(path)
            value = loaded.get("eos_token_id") if isinstance(loaded, dict) else None
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int):
                return value
    return None

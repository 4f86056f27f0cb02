"""Text sources as streams of documents, before tokenisation (`jdistill tokenize`, the training data cache).

Source names (`data.name`):
- `pystdlib_text`: the embedded corpus (one document per standard-library file, UTF-8 text).
- `pystdlib_functions`: derived from it (`jdistill.data.functions`): prompt = a function's signature and docstring,
  completion = its body; the same train/test split as the parent.
- `tfds:NAME`: a prepared tfds dataset; the document is its `text_key` feature (bytes or str).
- `files:GLOB`: local files. `.txt`: one document per file; `.jsonl`: one per line; `.parquet`: one per row.
  A `{split}` in the glob is replaced by the split's name; without it a document goes to `test` when a stable
  hash of (file name, record number) falls in the lowest 5%, else to `train`.

A document is one of three kinds, fixed per source (the first record decides, every other must match):
    text               {"text": str}                                    loss on every token
    prompt_completion  {"prompt": str, "completion": str}               loss on the completion
    chat               {"messages": [{"role", "content"}, ...]}         loss on the assistant turns
Each document also carries `where` ("file:line" or "NAME[index]") for error messages.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jdistill.errors import DataError

FILES_PREFIX = "files:"
TEST_PERCENT = 5
KINDS = ("text", "prompt_completion", "chat")
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


def kind_of(record: dict, where: str, text_key: str = "text") -> str:
    """The document kind of a jsonl/parquet record, from its fields; `DataError` naming `where` if none fits."""
    if "messages" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if text_key in record:
        return "text"
    raise DataError(
        f"{where}: expected a field {text_key!r}, or 'prompt' and 'completion', or 'messages'; "
        f"found {', '.join(sorted(record)) or 'none'}"
    )


def _document(record: dict, kind: str, where: str, text_key: str) -> dict:
    """The normalised document of `kind` from a record (its fields checked), plus `where`."""
    found = kind_of(record, where, text_key)
    if found != kind:
        raise DataError(f"{where}: a {found} record in a source whose first record is {kind} (mixed kinds)")
    if kind == "text":
        document = {"text": record[text_key]}
    elif kind == "prompt_completion":
        document = {"prompt": record["prompt"], "completion": record["completion"]}
    else:
        document = {"messages": _messages(record["messages"], where)}
    for key, value in document.items():
        if key != "messages" and not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return dict(document, where=where)


def _messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise DataError(f"{where}: each message needs a 'role' and a 'content'")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise DataError(f"{where}: a chat without an assistant turn (nothing to learn from)")
    return [{"role": turn["role"], "content": str(turn["content"])} for turn in messages]


def split_of_record(file_name: str, record: int) -> str:
    """`test` for ~TEST_PERCENT% of records chosen by a SHA-1 of (file name, record number), else `train`."""
    digest = hashlib.sha1(f"{file_name}:{record}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def file_paths(pattern: str, split: str) -> list[Path]:
    """The sorted files of `files:` glob `pattern` for `split`; `DataError` when none (or an unknown suffix)."""
    expanded = os.path.expanduser(pattern.replace("{split}", split))
    paths = sorted(Path(path) for path in glob.glob(expanded, recursive=True) if Path(path).is_file())
    if not paths:
        raise DataError(f"data.name files:{pattern}: no file matches {expanded!r}")
    for path in paths:
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(FILE_SUFFIXES)})")
    return paths


def _file_records(path: Path, text_key: str) -> Iterator[tuple[dict, str]]:
    """(record, "file:line") of one file: the whole `.txt`, each `.jsonl` line, each `.parquet` row."""
    try:
        if path.suffix == ".txt":
            yield {text_key: path.read_text(encoding="utf-8")}, f"{path}"
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}:{number}: expected a JSON object")
                    yield record, f"{path}:{number}"
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for number, record in enumerate(table.to_pylist()):
                yield record, f"{path}:row {number}"
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    except ImportError as error:  # pyarrow missing
        raise DataError(f"{path}: reading parquet needs pyarrow ({error})") from None


def _file_documents(pattern: str, split: str, text_key: str) -> Iterator[dict]:
    split_by_hash = "{split}" not in pattern
    kind = None
    for path in file_paths(pattern, "" if split_by_hash else split):
        for number, (record, where) in enumerate(_file_records(path, text_key)):
            kind = kind or kind_of(record, where, text_key)
            document = _document(record, kind, where, text_key)  # checked in every split
            if not split_by_hash or split_of_record(path.name, number) == split:
                yield document


def _source_documents(name: str, split: str, data_dir, text_key: str) -> Iterator[dict]:
    from jdistill.data.sources import load_source

    source = load_source(name, split, data_dir)
    key = "bytes" if name == "pystdlib_text" else text_key
    for index in range(len(source)):
        example = source[index]
        if key not in example:
            raise DataError(f"dataset {name}: no feature {key!r} (set data.text_key to one of {', '.join(example)})")
        value = example[key]
        if isinstance(value, np.ndarray):
            value = value.tobytes()
        text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        yield {"text": text, "where": f"{name}/{split}[{index}]"}


def documents(name: str, split: str, data_dir=None, *, text_key: str = "text") -> Iterator[dict]:
    """The documents of source `name`'s `split`, in a fixed order (see the module docstring)."""
    if name.startswith(FILES_PREFIX):
        return _file_documents(name[len(FILES_PREFIX) :], split, text_key)
    if name == "pystdlib_functions":
        from jdistill.data.functions import function_documents

        return function_documents(_source_documents("pystdlib_text", split, data_dir, text_key))
    return _source_documents(name, split, data_dir, text_key)


def document_kind(document: dict) -> str:
    if "messages" in document:
        return "chat"
    return "prompt_completion" if "prompt" in document else "text"

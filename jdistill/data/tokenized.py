"""Tokenised data on disk (`jdistill tokenize`, the training data cache): one array_record record per document.

A tokenised folder:

    metadata.json                              written last; its presence marks a complete folder
    <split>.index.npy                          int64 [num_documents, 2]: (tokens, prompt tokens) per document
    <split>.array_record-0000i-of-0000n        the documents in source order, `shard_size` per shard

metadata.json: {"format", "source", "kind" (text | prompt_completion | chat), "text_key", "tokenizer": {"spec",
"fingerprint", "vocab_size", "eos_id", "pad_id", "bos_id"}, "id_dtype", "splits": {split: {"documents", "tokens",
"shards", "bytes"}}}; `bytes` is the split's total UTF-8 bytes (rendered text), for bits per byte.

A record is the concatenated bytes of a header int32 [3] = (num_tokens, num_spans, prompt_tokens), the token ids
(`id_dtype`, the smallest unsigned type that holds the vocabulary) and the loss spans int32 [num_spans, 2] (half-open
token ranges that the loss covers; none for text, which is all loss). `prompt_tokens` is the prompt's length for
prompt/completion documents (their single span is [prompt_tokens, num_tokens)), the tokens before the first
assistant token for chats, 0 for text. No EOS is stored: the
reader appends `eos_id` to every document.

The folder is written under a temporary name next to `out` and renamed into place at the end, so a failed or
interrupted run leaves nothing at `out`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jdistill.data.documents import document_kind, documents
from jdistill.data.teacher_cache import id_dtype
from jdistill.errors import DataError
from jdistill.io import strict_json

FORMAT = "jdistill.tokenized/1"
METADATA = "metadata.json"
HEADER = 3  # int32 (num_tokens, num_spans, prompt_tokens)
WRITER_OPTIONS = "group_size:1,uncompressed"  # random access to one record; decompression would cost more than I/O


def encode_document(document: dict, tok) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(ids int32 [n], loss spans int32 [k, 2], prompt tokens, UTF-8 bytes) of one document."""
    kind = document_kind(document)
    if kind == "text":
        text = document["text"]
        return tok.encode(text).astype(np.int32), np.zeros((0, 2), np.int32), 0, len(text.encode("utf-8"))
    if kind == "prompt_completion":
        prompt, completion = tok.encode(document["prompt"]), tok.encode(document["completion"])
        ids = np.concatenate([prompt, completion]).astype(np.int32)
        spans = np.array([[len(prompt), len(ids)]], np.int32)
        size = len((document["prompt"] + document["completion"]).encode("utf-8"))
        return ids, spans, len(prompt), size
    ids, assistant = tok.encode_chat(document["messages"])
    if not np.any(assistant):
        raise DataError(f"{document['where']}: the chat has no assistant tokens after rendering")
    spans = mask_spans(np.asarray(assistant, bool))  # the prompt: everything before the first assistant token
    return np.asarray(ids, np.int32), spans, int(spans[0, 0]), len(tok.decode(ids).encode("utf-8"))


def mask_spans(mask: np.ndarray) -> np.ndarray:
    """The half-open [start, stop) runs of True in a bool vector, int32 [k, 2]."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).astype(np.int32)


def encode_record(ids: np.ndarray, spans: np.ndarray, prompt_tokens: int, dtype: np.dtype) -> bytes:
    header = np.array([len(ids), len(spans), prompt_tokens], np.int32)
    return header.tobytes() + ids.astype(dtype).tobytes() + spans.astype(np.int32).tobytes()


def decode_record(raw: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [n] of `dtype`, loss spans int32 [k, 2], prompt tokens) of a stored record (read-only views of `raw`)."""
    num_tokens, num_spans, prompt_tokens = np.frombuffer(raw, np.int32, HEADER)
    offset = HEADER * 4
    ids = np.frombuffer(raw, dtype, num_tokens, offset)
    spans = np.frombuffer(raw, np.int32, 2 * num_spans, offset + num_tokens * dtype.itemsize).reshape(-1, 2)
    return ids, spans, int(prompt_tokens)


def tokenizer_metadata(spec: str, tok) -> dict:
    return {
        "spec": spec,
        "fingerprint": tok.fingerprint,
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "pad_id": int(tok.pad_id),
        "bos_id": None if tok.bos_id is None else int(tok.bos_id),
    }


def tokenize_source(
    source: str,
    tokenizer_spec: str,
    out,
    *,
    splits: Iterable[str] = ("train", "test"),
    shard_size: int = 4096,
    data_dir=None,
    text_key: str = "text",
    progress: bool = True,
) -> dict:
    """Tokenise `source`'s splits with `tokenizer_spec` into the folder `out` (atomically); returns its metadata."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    from jdistill.text import load_tokenizer

    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size}: expected a positive integer")
    tok = load_tokenizer(tokenizer_spec)
    dtype = id_dtype(tok.vocab_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "source": source,
        "kind": None,
        "text_key": text_key,
        "tokenizer": tokenizer_metadata(tokenizer_spec, tok),
        "id_dtype": dtype.name,
        "splits": {},
    }
    try:
        for split in splits:
            index, counts, shard, writer = [], {"documents": 0, "tokens": 0, "bytes": 0}, 0, None
            shard_paths = []
            docs = documents(source, split, data_dir, text_key=text_key)
            for document in tqdm(docs, desc=f"tokenize {split}", unit=" docs", disable=not progress, file=sys.stderr):
                kind = document_kind(document)
                if metadata["kind"] is None:
                    metadata["kind"] = kind
                elif kind != metadata["kind"]:
                    raise DataError(f"{document['where']}: a {kind} document in a {metadata['kind']} source")
                ids, spans, prompt_tokens, size = encode_document(document, tok)
                if writer is None or (counts["documents"] % shard_size == 0 and counts["documents"]):
                    if writer is not None:
                        writer.close()
                    shard_paths.append(temporary / f"{split}.array_record-{shard:05d}")
                    writer = ArrayRecordWriter(str(shard_paths[-1]), WRITER_OPTIONS)
                    shard += 1
                writer.write(encode_record(ids, spans, prompt_tokens, dtype))
                index.append((len(ids), prompt_tokens))
                counts["documents"] += 1
                counts["tokens"] += len(ids)
                counts["bytes"] += size
            if writer is not None:
                writer.close()
            if not index:
                raise DataError(f"data {source}: split {split!r} has no documents")
            for path in shard_paths:  # name the shards -0000i-of-0000n now that n is known
                path.rename(f"{path}-of-{len(shard_paths):05d}")
            np.save(temporary / f"{split}.index.npy", np.asarray(index, np.int64))
            metadata["splits"][split] = dict(counts, shards=len(shard_paths))
        (temporary / METADATA).write_text(strict_json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return metadata


def read_metadata(directory) -> dict:
    path = Path(directory) / METADATA
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory}: not a tokenised data folder (no {METADATA}; run `jdistill tokenize`)") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


class TokenizedSplit:
    """Random access to one split of a tokenised folder: `split.document(i)` -> (ids, spans, prompt tokens).

    Holds only the per-document index (`lengths`, `prompt_lengths`) in memory; documents are read on demand.
    """

    def __init__(self, directory, split: str):
        self.directory = Path(directory)
        self.metadata = read_metadata(directory)
        if split not in self.metadata["splits"]:
            available = ", ".join(self.metadata["splits"])
            raise DataError(f"{directory}: no split {split!r} (tokenised splits: {available})")
        self.split = split
        self.kind: str = self.metadata["kind"]
        self.eos_id: int = self.metadata["tokenizer"]["eos_id"]
        self.pad_id: int = self.metadata["tokenizer"]["pad_id"]
        self.dtype = np.dtype(self.metadata["id_dtype"])
        index = np.load(self.directory / f"{split}.index.npy")
        self.lengths = index[:, 0]
        self.prompt_lengths = index[:, 1]

    def __len__(self) -> int:
        return len(self.lengths)

    @functools.cached_property
    def source(self):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        paths = sorted(self.directory.glob(f"{self.split}.array_record-*"))
        return ArrayRecordDataSource([str(path) for path in paths])

    def documents(self, indices) -> list[tuple[np.ndarray, np.ndarray, int]]:
        source = self.source  # one read per record: `__getitems__` starts a thread pool, slower for a few records
        return [decode_record(source[int(index)], self.dtype) for index in indices]

    def document(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        return self.documents([index])[0]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for index in range(len(self)):
            yield self.document(index)

    def __getstate__(self):  # the array_record reader is reopened after pickling (grain worker processes)
        state = dict(self.__dict__)
        state.pop("source", None)
        return state

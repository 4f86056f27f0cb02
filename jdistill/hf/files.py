"""Checkpoint folders on disk: `hf:DIR` specs, required files, tokenizer files, and atomic writes of a whole folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jdistill.hf.config import HFImportError

# What a Hugging Face tokenizer consists of (those present are copied with a checkpoint).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def hf_dir(spec: str, what: str) -> Path:
    """The folder of "hf:DIR" (or a plain DIR) holding a config.json; a one-line error naming `what` otherwise."""
    directory = Path(spec[3:] if spec.startswith("hf:") else spec)
    require_file(directory, "config.json", what)
    return directory


def require_file(directory: Path, name: str, what: str) -> Path:
    """`directory / name`, or a one-line `HFImportError` saying which file `what` needs."""
    path = Path(directory) / name
    if not path.is_file():
        raise HFImportError(f"{what}: {path}: no such file (expected a Hugging Face checkpoint folder with {name})")
    return path


def read_json(path: Path) -> Any:
    """The parsed JSON file; missing, unreadable, non-UTF-8 or invalid JSON is a one-line HFImportError."""
    if not path.is_file():
        raise HFImportError(f"{path}: no such file (expected a Hugging Face checkpoint directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HFImportError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise HFImportError(f"{path}: not UTF-8 text (expected JSON)") from None
    except OSError as error:
        raise HFImportError(f"{path}: cannot be read ({error.strerror or error})") from None


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    """Copy the tokenizer files `source` has into `target`; the names copied."""
    copied = [name for name in TOKENIZER_FILES if (Path(source) / name).is_file()]
    for name in copied:
        shutil.copyfile(Path(source) / name, Path(target) / name)
    return copied


def check_output_dir(out: Path, flag: str = "--out") -> Path:
    """`out` must not exist yet, or be an empty folder (nothing is overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFImportError(f"{flag} {out}: already exists and is not an empty folder (choose a new path)")
    return out


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success it is renamed to `out`, on failure removed. A reader never
    sees a half-written checkpoint."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.incomplete-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir():
        out.rmdir()  # empty (check_output_dir)
    os.replace(tmp, out)

"""Paths that are local folders or `gs://` URLs, and writes that readers never see half done.

`path(p)` is a `pathlib.Path` for a local path and an `etils.epath.Path` for a `gs://` URL (read and written through
fsspec's `gcs` filesystem, the one orbax uses), so `run_dir / "metrics.jsonl"`, `.read_text()`, `.mkdir()`,
`.iterdir()` work on both. Never wrap such a path in `pathlib.Path(...)`: that turns `gs://b/x` into the local
`gs:/b/x`. Cloud storage has no append and no rename: an object write is atomic by itself, so `write_bytes_atomic`
writes remote objects directly and local files through a temporary name and `os.replace`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import fsspec
from etils import epath

from jdistill.errors import RunDirError

REMOTE_PREFIXES = ("gs://",)  # URL schemes run directories may use (fsspec's gcs filesystem behind etils.epath)

AnyPath = Any  # pathlib.Path or etils.epath.Path: both have the pathlib API used here
PathLike = Any  # what the functions here accept: a local path or a gs:// URL, as str or path object


def is_remote(p: PathLike) -> bool:
    """Whether `p` is a cloud storage URL (`gs://...`) rather than a local path."""
    return os.fspath(p).startswith(REMOTE_PREFIXES)


def path(p: PathLike) -> AnyPath:
    """`p` as a path object: `etils.epath.Path` for `gs://` URLs, `pathlib.Path` otherwise; one-line RunDirError
    for another URL scheme (it would otherwise become a local folder named after the scheme) and for gs:// without
    gcsfs installed."""
    text = os.fspath(p)
    if text.startswith(REMOTE_PREFIXES):
        try:
            fsspec.get_filesystem_class("gcs")
        except ImportError:
            raise RunDirError(
                f'{text}: gs:// paths need gcsfs (pip install gcsfs, or the ".[gcs]" extra) and GCP credentials'
            ) from None
        return p if isinstance(p, epath.Path) else epath.Path(text)
    if "://" in text:
        raise RunDirError(f"{text}: only local paths and {', '.join(REMOTE_PREFIXES)} URLs are supported")
    return pathlib.Path(text)


def checkpoint_location(p: AnyPath) -> AnyPath:
    """Where orbax writes the checkpoints of `p`: `p` itself (orbax writes gs:// through tensorstore's own GCS
    driver, not fsspec); `jdistill.io.fake_gcs` maps it to its local folder in tests."""
    return p


def write_bytes_atomic(target: PathLike, data: bytes) -> None:
    """Write `data` to `target` so a reader sees the old content or the new one, never a part: remote objects in one
    write (atomic in cloud storage), local files through `NAME.tmp` and a rename."""
    target = path(target)
    if is_remote(target):
        target.write_bytes(data)
        return
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def write_text_atomic(target: PathLike, text: str) -> None:
    """`write_bytes_atomic` of `text` in UTF-8."""
    write_bytes_atomic(target, text.encode("utf-8"))


class Appender:
    """Appends chunks of bytes to a file; each chunk is in the file when `append` returns.

    Local files: one `write` call per chunk on a file opened in append mode, then a flush (and `fsync` with
    `sync=True`), so a killed process leaves whole chunks and at most one partial last chunk. Cloud objects cannot
    be appended to: the whole content is rewritten at each append (one atomic object write, so never a partial
    chunk), at the cost of uploading the file again each time (a metrics file is a few MB at most).
    """

    def __init__(self, target: PathLike, *, sync: bool = False):
        self.path = path(target)
        self.sync = sync
        self._remote = is_remote(self.path)
        self._buffer = bytearray()
        self._file = None
        if self._remote:
            if self.path.exists():
                self._buffer += self.path.read_bytes()
        else:
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across appends; closed by close())

    def append(self, data: bytes) -> None:
        if self._file is None:
            self._buffer += data
            self.path.write_bytes(bytes(self._buffer))
            return
        self._file.write(data)
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""A local stand-in for Google Cloud Storage, for tests: `gs://BUCKET/PATH` read and written as `ROOT/BUCKET/PATH`.

    with fake_gcs(tmp_path / "gcs"):
        run_job(config, "gs://bucket/run")

Inside the block, fsspec's `gs` / `gcs` protocols (what `etils.epath` and so `jdistill.io.fs` use for gs:// URLs)
are a local filesystem rooted at ROOT that, like cloud storage, refuses to append to a file; and
`jdistill.io.fs.checkpoint_location` sends orbax's checkpoints of a gs:// folder to the matching local folder (orbax
writes arrays through tensorstore, whose own GCS driver talks to the real service and cannot be faked here). On
exit the previous filesystems are back.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
from collections.abc import Iterator

import fsspec
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

from jdistill.io import fs


class LocalBucketFileSystem(LocalFileSystem):
    """fsspec filesystem for `gs://BUCKET/PATH` kept under the local folder `root` (a class attribute, set by
    `fake_gcs`); no append mode, as in cloud storage."""

    protocol = ("gs", "gcs")
    root: str = ""

    def __init__(self, *args, **kwargs):  # accepts gcsfs options such as finalize_on_close
        super().__init__(auto_mkdir=True)

    @classmethod
    def _strip_protocol(cls, path):
        text = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            if text.startswith(prefix):
                text = os.path.join(cls.root, text[len(prefix) :])
                break
        return super()._strip_protocol(text)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise OSError(f"{path}: cloud storage objects cannot be appended to (mode {mode!r})")
        return super()._open(path, mode=mode, **kwargs)


def local_path(url: str, root: str | os.PathLike) -> pathlib.Path:
    """The local file that stands for `url` (gs://BUCKET/PATH) under `root`."""
    return pathlib.Path(root) / os.fspath(url).split("://", 1)[1]


@contextlib.contextmanager
def fake_gcs(root: str | os.PathLike) -> Iterator[pathlib.Path]:
    """gs:// URLs on the local folder `root` for the duration of the block (see the module docstring)."""
    root = pathlib.Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry is a read-only view of it
    before = {name: registry.get(name) for name in LocalBucketFileSystem.protocol}
    previous_root, previous_location = LocalBucketFileSystem.root, fs.checkpoint_location
    LocalBucketFileSystem.root = str(root)
    for name in LocalBucketFileSystem.protocol:
        fsspec.register_implementation(name, LocalBucketFileSystem, clobber=True)
    fs.checkpoint_location = lambda p: local_path(p, root) if fs.is_remote(p) else previous_location(p)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        yield root
    finally:
        LocalBucketFileSystem.root = previous_root
        fs.checkpoint_location = previous_location
        for name, cls in before.items():
            if cls is None:
                registry.pop(name, None)
            else:
                registry[name] = cls
        epath_backend.fsspec_backend._get_filesystem.cache_clear()

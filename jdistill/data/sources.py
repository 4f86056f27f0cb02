"""Random-access data sources: embedded offline datasets and already-prepared `tfds:` datasets.

Dataset names:
- `digits`, `pystdlib_text`: embedded; built with the local tfds builders into the data dir on first
  use (array_record; no network, no TensorFlow).
- `tfds:NAME`, `tfds:NAME/CONFIG`, `tfds:NAME:VERSION`, `tfds:NAME/CONFIG:VERSION`: a tfds
  dataset already prepared (array_record) in the data dir. Nothing is ever downloaded.

A source is a `Sequence` of example dicts of numpy values (`source[i]`), e.g. for `digits`
`{"image": uint8 [8, 8, 1], "label": int, "id": int}`.
"""

import contextlib
import fcntl
import io
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from jdistill.data.builders.digits import Digits
from jdistill.data.builders.pystdlib_text import PystdlibText
from jdistill.errors import DataError

DATA_DIR_ENV = "JDISTILL_DATA_DIR"
TFDS_PREFIX = "tfds:"
EMBEDDED: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits": Digits,
    "pystdlib_text": PystdlibText,
}


def resolve_data_dir(configured: str | os.PathLike | None) -> pathlib.Path:
    """The data dir: `configured`, else `$JDISTILL_DATA_DIR`, else `$XDG_CACHE_HOME/jdistill/...`.

    The last fallback is `~/.cache/jdistill/tensorflow_datasets` when `XDG_CACHE_HOME` is unset.
    """
    if configured:
        return pathlib.Path(configured).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache_home).expanduser() / "jdistill" / "tensorflow_datasets"


def load_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Sequence[dict]:
    """A random-access source (`len(source)`, `source[i]` -> dict of numpy) for a dataset split.

    Embedded names are built on first use (idempotent and safe when processes race); `tfds:` names
    must already be prepared in the data dir. Raises `DataError` for an unknown name or split, an
    unprepared `tfds:` dataset, or a data dir that cannot be written when a build is needed.
    """
    directory = resolve_data_dir(data_dir)
    if name.startswith(TFDS_PREFIX):
        builder = _prepared_tfds_builder(name[len(TFDS_PREFIX) :], directory)
    elif name in EMBEDDED:
        builder = _built_embedded_builder(name, directory)
    else:
        valid = ", ".join(sorted(EMBEDDED))
        raise DataError(f"unknown dataset {name!r}: expected one of {valid}, or tfds:NAME for a prepared tfds dataset")
    _check_split(name, split, builder)
    return builder.as_data_source(split=split)


def _built_embedded_builder(name: str, directory: pathlib.Path) -> tfds.core.DatasetBuilder:
    """The embedded dataset's builder, building it under an exclusive lock if not yet prepared."""
    builder = EMBEDDED[name](data_dir=str(directory), file_format="array_record")
    if builder.is_prepared():
        return builder  # Reading needs no lock, so a read-only copied data dir works.
    with exclusive_lock(directory, name):
        builder = EMBEDDED[name](data_dir=str(directory), file_format="array_record")
        if not builder.is_prepared():  # Another process may have built it while we waited.
            print(f"jdistill: building embedded dataset {name} in {directory} (first use, offline)", file=sys.stderr)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading ..." here
                    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
            except OSError as error:
                raise DataError(
                    f"cannot build dataset {name} in data dir {directory}: "
                    f"{error.strerror or error}; set data.dir (or JDISTILL_DATA_DIR) to a "
                    "writable directory"
                ) from error
    return builder


@contextlib.contextmanager
def exclusive_lock(directory: pathlib.Path, name: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `<directory>/.<name>.lock` (creating the directory)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(directory / f".{name}.lock", "a")  # noqa: SIM115 - closed below
    except OSError as error:
        raise DataError(
            f"data dir {directory} is not writable ({error.strerror or error}); "
            "set data.dir (or JDISTILL_DATA_DIR) to a writable directory"
        ) from error
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _prepared_tfds_builder(spec: str, directory: pathlib.Path) -> tfds.core.DatasetBuilder:
    """A read-only builder for `NAME[/CONFIG][:VERSION]` prepared in `directory`, else `DataError`.

    Reads the prepared files' own metadata (no dataset code, so no TensorFlow and no version skew
    between the installed tfds and the one that prepared the data).
    """
    dataset_name = re.split(r"[/:]", spec, maxsplit=1)[0]
    not_prepared = DataError(
        f"dataset tfds:{spec} is not prepared in {directory} (this machine is offline); prepare it "
        f"where there is network with `tfds build {dataset_name} --data_dir {directory} "
        f"--file_format array_record` and copy {directory} here, or set data.dir"
    )
    if not spec or not directory.is_dir():
        raise not_prepared
    try:
        builder = tfds.core.read_only_builder.builder_from_files(spec, data_dir=str(directory))
    except (tfds.core.registered.DatasetNotFoundError, ValueError, OSError):
        raise not_prepared from None
    file_format = builder.info.file_format
    if file_format is not None and file_format.value != "array_record":
        raise DataError(
            f"dataset tfds:{spec} in {directory} is stored as {file_format.value}, which needs "
            f"TensorFlow to read; rebuild it with `tfds build {dataset_name} "
            f"--data_dir {directory} --file_format array_record`"
        )
    return builder


def _check_split(name: str, split: str, builder: tfds.core.DatasetBuilder) -> None:
    """Raise `DataError` unless the split's base name (before any `[...]` slice) exists."""
    available = sorted(builder.info.splits.keys())
    base_split = split.split("[", 1)[0]
    if base_split not in available:
        raise DataError(f"dataset {name} has no split {split!r}: available splits are {', '.join(available)}")

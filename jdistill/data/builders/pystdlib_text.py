"""tfds builder `pystdlib_text`: the running Python's standard library source, as raw bytes.

A byte-level text corpus that needs no download: every `.py` file under
`sysconfig.get_paths()["stdlib"]`, one example per file, stored undecoded
(`bytes`: uint8 [num_bytes], `path`: the relative POSIX path).

File list (deterministic for a given installation): sorted relative POSIX paths of regular `.py`
files, skipping any directory named `site-packages`, `dist-packages`, `__pycache__`, `test`,
`tests` or `idle_test` (this covers `test/`, `lib2to3/tests/`, `idlelib/idle_test/`, ...), and
files over 1 MB.

Split: by a stable hash of the relative path, so a file never moves between splits:
`int.from_bytes(sha1(path).digest()[:8], "big") % 100 < 5` -> `test` (~5%), else `train` (~95%).

The corpus depends on the interpreter, so there is one builder config per Python `major.minor`
(e.g. `py3_11`); the exact interpreter version it was built with is recorded in the metadata.
"""

import hashlib
import os
import pathlib
import platform
import sys
import sysconfig
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

EXCLUDED_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
MAX_FILE_BYTES = 1_000_000
TEST_PERCENT = 5
DOCUMENT_SEPARATOR = 0  # Python source never contains NUL bytes; the LM packer relies on it.


def stdlib_root() -> pathlib.Path:
    """The running interpreter's standard library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(root: pathlib.Path) -> list[str]:
    """Sorted relative POSIX paths of the corpus files under `root` (see module docstring)."""
    relative_paths = []
    for directory, subdirectories, filenames in os.walk(root, followlinks=False):
        subdirectories[:] = [name for name in subdirectories if name not in EXCLUDED_DIR_NAMES]
        for filename in filenames:
            path = pathlib.Path(directory, filename)
            if not filename.endswith(".py") or not path.is_file():
                continue
            if path.stat().st_size <= MAX_FILE_BYTES:
                relative_paths.append(path.relative_to(root).as_posix())
    return sorted(relative_paths)


def split_of(relative_path: str) -> str:
    """`"test"` for ~TEST_PERCENT% of paths chosen by a SHA-1 of the path, else `"train"`."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def python_config_name() -> str:
    """Builder config name for the running interpreter, e.g. `py3_11`."""
    return f"py{sys.version_info.major}_{sys.version_info.minor}"


class PystdlibText(tfds.core.GeneratorBasedBuilder):
    """The running Python's standard library `.py` files as a byte-level corpus."""

    name = "pystdlib_text"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: raw bytes + path; sha1(path) split, ~95% train / ~5% test.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=python_config_name(),
            description=f"Standard library of Python {sys.version_info[0]}.{sys.version_info[1]}.",
        )
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Byte-level corpus of the Python standard library's own .py source files "
                f"(Python {platform.python_version()}, {platform.python_implementation()}). "
                "One example per file: raw undecoded bytes and the relative POSIX path. "
                "Excludes site-packages, test/tests/idle_test directories, __pycache__ and files "
                f"over {MAX_FILE_BYTES} bytes. Split by sha1(path): ~{TEST_PERCENT}% test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                    "path": tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(
                python_version=platform.python_version(),
                python_implementation=platform.python_implementation(),
                document_separator=DOCUMENT_SEPARATOR,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The corpus is the local interpreter's standard library.
        root = stdlib_root()
        paths_by_split: dict[str, list[str]] = {"train": [], "test": []}
        for relative_path in list_stdlib_files(root):
            paths_by_split[split_of(relative_path)].append(relative_path)
        return {split: self._generate_examples(root, paths) for split, paths in paths_by_split.items()}

    def _generate_examples(self, root: pathlib.Path, relative_paths: list[str]) -> Iterator:
        for relative_path in relative_paths:
            content = (root / relative_path).read_bytes()
            if bytes([DOCUMENT_SEPARATOR]) in content:
                raise ValueError(f"{root / relative_path} contains a NUL byte; not Python source")
            yield (
                relative_path,
                {
                    "bytes": np.frombuffer(content, dtype=np.uint8),
                    "path": relative_path,
                },
            )

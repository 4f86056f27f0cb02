"""The `pystdlib_text` builder: file selection, hashed split, raw bytes, determinism."""

import platform

import numpy as np

from jdistill.data import load_source
from jdistill.data.builders.pystdlib_text import (
    EXCLUDED_DIR_NAMES,
    MAX_FILE_BYTES,
    list_stdlib_files,
    python_config_name,
    split_of,
    stdlib_root,
)

from .conftest import all_examples


def paths_of(source):
    return [example["path"].decode("utf-8") for example in all_examples(source)]


def test_splits_are_disjoint_and_cover_the_file_list(stdlib_train, stdlib_test):
    train_paths, test_paths = set(paths_of(stdlib_train)), set(paths_of(stdlib_test))
    assert not train_paths & test_paths
    assert sorted(train_paths | test_paths) == list_stdlib_files(stdlib_root())


def test_split_follows_the_path_hash(stdlib_train, stdlib_test):
    assert all(split_of(path) == "train" for path in paths_of(stdlib_train))
    assert all(split_of(path) == "test" for path in paths_of(stdlib_test))
    assert 0.02 < len(stdlib_test) / (len(stdlib_train) + len(stdlib_test)) < 0.10


def test_file_list_excludes_tests_caches_and_large_files():
    root = stdlib_root()
    paths = list_stdlib_files(root)
    assert paths == sorted(paths) and len(paths) > 100
    for path in paths:
        assert path.endswith(".py")
        assert not EXCLUDED_DIR_NAMES & set(path.split("/")[:-1]), path
        assert (root / path).stat().st_size <= MAX_FILE_BYTES


def test_bytes_are_the_raw_file_contents(stdlib_test):
    root = stdlib_root()
    for example in all_examples(stdlib_test):
        assert example["bytes"].dtype == np.uint8
        assert example["bytes"].tobytes() == (root / example["path"].decode()).read_bytes()
        assert not np.any(example["bytes"] == 0)


def test_records_the_python_version(stdlib_train):
    info = stdlib_train.dataset_info
    assert info.metadata["python_version"] == platform.python_version()
    assert info.config_name == python_config_name()
    assert platform.python_version() in info.description


def test_building_twice_gives_identical_examples(data_dir, rebuilt_data_dir):
    for split in ("train", "test"):
        first = all_examples(load_source("pystdlib_text", split, data_dir))
        second = all_examples(load_source("pystdlib_text", split, rebuilt_data_dir))
        assert [example["path"] for example in first] == [example["path"] for example in second]
        assert all(a["bytes"].tobytes() == b["bytes"].tobytes() for a, b in zip(first, second, strict=True))

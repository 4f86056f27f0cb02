"""Data fixtures over the session data dir (see tests/conftest.py) and a second, independent build."""

import pytest

from jdistill.data import load_source


@pytest.fixture(scope="session")
def rebuilt_data_dir(tmp_path_factory):
    """A second, independent build of both embedded datasets, for determinism checks."""
    directory = tmp_path_factory.mktemp("tensorflow_datasets_again")
    for name in ("digits", "pystdlib_text"):
        load_source(name, "train", directory)
    return directory


@pytest.fixture(scope="session")
def digits_train(data_dir):
    return load_source("digits", "train", data_dir)


@pytest.fixture(scope="session")
def digits_test(data_dir):
    return load_source("digits", "test", data_dir)


@pytest.fixture(scope="session")
def stdlib_train(data_dir):
    return load_source("pystdlib_text", "train", data_dir)


@pytest.fixture(scope="session")
def stdlib_test(data_dir):
    return load_source("pystdlib_text", "test", data_dir)


def all_examples(source):
    """Every example of a source, in source order."""
    return [source[index] for index in range(len(source))]

"""Session-wide fixtures: one offline data dir with both embedded datasets, shared by every test."""

import os

# The suite is CPU-only (TPU programs are compiled ahead of time in subprocesses); this also keeps an installed
# libtpu from probing for TPUs and logging to stderr in every process the tests start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from jdistill.data import load_source


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data dir in which `digits` and `pystdlib_text` are built (offline) once per session; exported as
    JDISTILL_DATA_DIR so configs and CLI subprocesses read it."""
    directory = tmp_path_factory.mktemp("tensorflow_datasets")
    for name in ("digits", "pystdlib_text"):
        load_source(name, "train", directory)
    os.environ["JDISTILL_DATA_DIR"] = str(directory)
    return directory

"""`resolve_data_dir` and `load_source`: embedded builds, prepared `tfds:` datasets, user errors."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jdistill.data import load_source, resolve_data_dir
from jdistill.errors import DataError


def test_resolve_data_dir_prefers_the_configured_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JDISTILL_DATA_DIR", str(tmp_path / "from_env"))
    assert resolve_data_dir(str(tmp_path / "configured")) == tmp_path / "configured"


def test_resolve_data_dir_falls_back_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JDISTILL_DATA_DIR", str(tmp_path / "from_env"))
    assert resolve_data_dir(None) == tmp_path / "from_env"


def test_resolve_data_dir_defaults_to_the_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("JDISTILL_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path / "jdistill" / "tensorflow_datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir(None) == pathlib.Path.home() / ".cache/jdistill/tensorflow_datasets"


def test_unknown_embedded_name_lists_the_valid_names(data_dir):
    with pytest.raises(DataError, match="digits, pystdlib_text") as error:
        load_source("digitz", "train", data_dir)
    assert "\n" not in str(error.value)


def test_unknown_split_lists_the_available_splits(data_dir):
    with pytest.raises(DataError, match="available splits are test, train"):
        load_source("digits", "validation", data_dir)


def test_split_slices_are_accepted(data_dir):
    assert len(load_source("digits", "test[:10]", data_dir)) == 10


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_source("tfds:mnist", "train", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert f"dataset tfds:mnist is not prepared in {tmp_path} (this machine is offline)" in message
    assert f"tfds build mnist --data_dir {tmp_path} --file_format array_record" in message


def test_unprepared_tfds_dataset_in_a_populated_dir_is_reported(data_dir):
    with pytest.raises(DataError, match="tfds:no_such_dataset is not prepared"):
        load_source("tfds:no_such_dataset", "train", data_dir)


def test_prepared_tfds_dataset_is_read_from_the_data_dir(data_dir, digits_test):
    for spec in ("tfds:digits", "tfds:digits:1.0.0"):
        source = load_source(spec, "test", data_dir)
        assert len(source) == 360
        np.testing.assert_array_equal(source[7]["image"], digits_test[7]["image"])


def test_prepared_tfds_dataset_with_config_is_read(data_dir):
    config = load_source("pystdlib_text", "test", data_dir).dataset_info.config_name
    source = load_source(f"tfds:pystdlib_text/{config}", "test", data_dir)
    assert source[0]["bytes"].dtype == np.uint8


def test_unwritable_data_dir_names_the_directory(tmp_path):
    blocking_file = tmp_path / "not_a_directory"
    blocking_file.write_text("")
    with pytest.raises(DataError, match=f"data dir {blocking_file / 'tfds'} is not writable"):
        load_source("digits", "train", blocking_file / "tfds")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_data_dir_names_the_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(DataError, match=str(tmp_path)):
            load_source("digits", "train", tmp_path)
    finally:
        tmp_path.chmod(0o700)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_building_and_reading_never_imports_tensorflow(tmp_path):
    result = run_python(f"""
        import json, sys
        from jdistill.configs.schema import DataConfig
        from jdistill.data import (classification_train_dataset, load_source, lm_train_dataset, lm_windows)
        digits = load_source("digits", "train", {str(tmp_path)!r})
        classification_train_dataset(digits, seed=0, batch_size=8)[3]
        text = lm_windows(DataConfig(name="pystdlib_text", dir={str(tmp_path)!r}, seq_len=16), "test")
        lm_train_dataset(text, seed=0, batch_size=4)[3]
        load_source("tfds:digits", "test", {str(tmp_path)!r})[0]
        loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow")
        print(json.dumps(loaded))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_concurrent_first_use_builds_once(tmp_path):
    code = f"""
        from jdistill.data import load_source
        print(len(load_source("digits", "test", {str(tmp_path)!r})))
    """
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:]
    assert [stdout.split()[-1] for stdout, _ in outputs] == ["360", "360"]
    assert sorted(path.name for path in (tmp_path / "digits").iterdir()) == ["1.0.0"]

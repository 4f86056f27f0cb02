"""The embedded corpus through the one LM path: tokenised once into the data dir's cache, read as packed windows."""

import numpy as np
import pytest

from jdistill.configs.schema import DataConfig
from jdistill.data import lm_eval_batches, lm_windows, tokenized_dir
from jdistill.data.tokenized import read_metadata


@pytest.fixture(scope="module")
def stdlib_config(data_dir):
    return DataConfig(name="pystdlib_text", dir=str(data_dir), seq_len=100)


def test_bytes_stream_is_each_document_then_eos(stdlib_config, stdlib_test):
    windows = lm_windows(stdlib_config, "test", include_partial_tail=True)
    documents = [bytes(stdlib_test[index]["bytes"]) for index in range(len(stdlib_test))]
    stream = np.frombuffer(b"".join(document + b"\0" for document in documents), np.uint8)
    batches = list(lm_eval_batches(windows, batch_size=32))
    real = [batch["segment_ids"] > 0 for batch in batches]
    inputs = np.concatenate([batch["inputs"][keep] for batch, keep in zip(batches, real, strict=True)])
    np.testing.assert_array_equal(inputs, stream[:-1])
    scored = sum(int(batch["mask"].sum()) for batch in batches)
    assert scored == len(stream) - len(documents)  # every target once, but no document's first byte


def test_the_cache_is_built_once_and_described(stdlib_config, data_dir):
    directory = tokenized_dir("pystdlib_text", "bytes", data_dir)
    assert directory.parent == data_dir / "tokenized"
    metadata = read_metadata(directory)
    assert metadata["tokenizer"]["vocab_size"] == 256 and metadata["kind"] == "text"
    assert metadata["splits"]["test"]["bytes"] == metadata["splits"]["test"]["tokens"]  # bytes: one token a byte
    stamp = (directory / "metadata.json").stat().st_mtime_ns
    assert tokenized_dir("pystdlib_text", "bytes", data_dir) == directory
    assert (directory / "metadata.json").stat().st_mtime_ns == stamp


def test_eval_batches_stop_at_max_batches(stdlib_config):
    windows = lm_windows(stdlib_config, "test", include_partial_tail=True)
    assert len(list(lm_eval_batches(windows, batch_size=8, max_batches=3))) == 3

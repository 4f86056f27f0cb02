"""Byte-level LM packing and windows: separators, shifted targets, seeded order, eval coverage."""

import numpy as np
import pytest

from jdistill.data import lm_eval_batches, lm_train_dataset, load_source, packed_stream
from jdistill.data.lm import SEPARATOR, LMWindows


def test_packed_stream_terminates_each_document_with_the_separator(stdlib_test):
    stream = packed_stream(stdlib_test)
    documents = [stdlib_test[index]["bytes"] for index in range(len(stdlib_test))]
    assert stream.dtype == np.uint8
    assert len(stream) == sum(map(len, documents)) + len(documents)
    assert np.count_nonzero(stream == SEPARATOR) == len(documents)
    assert stream.tobytes().split(b"\x00")[:-1] == [document.tobytes() for document in documents]


def test_packed_stream_is_built_once_per_source(data_dir, stdlib_test):
    reloaded = load_source("pystdlib_text", "test", data_dir)
    assert packed_stream(stdlib_test) is packed_stream(reloaded)


def test_documents_containing_the_separator_are_rejected():
    with pytest.raises(ValueError, match="document 1 contains the separator"):
        packed_stream([{"bytes": np.array(document, np.uint8)} for document in ([1, 2], [3, 0])])


def test_train_batch_format_and_shifted_targets(stdlib_test):
    batch = lm_train_dataset(stdlib_test, seq_len=64, seed=0, batch_size=8)[11]
    for key in ("inputs", "targets"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (8, 64)
    assert batch["mask"].dtype == np.bool_ and batch["mask"].all()
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_windows_are_aligned_slices_of_the_stream():
    stream = np.arange(1, 24, dtype=np.uint8)
    window = LMWindows(stream, 5)[2]
    np.testing.assert_array_equal(window["inputs"], stream[10:15])
    np.testing.assert_array_equal(window["targets"], stream[11:16])


def test_same_seed_same_batch_different_seed_different(stdlib_test):
    first, second, other = (
        lm_train_dataset(stdlib_test, seq_len=32, seed=seed, batch_size=4)[500] for seed in (1, 1, 2)
    )
    np.testing.assert_array_equal(first["inputs"], second["inputs"])
    assert not np.array_equal(first["inputs"], other["inputs"])


def first_epoch_rows(dataset, num_rows: int, batch_size: int) -> list[bytes]:
    num_steps = -(-num_rows // batch_size)
    rows = np.concatenate([dataset[step]["inputs"] for step in range(num_steps)])[:num_rows]
    return sorted(row.tobytes() for row in rows)


def test_each_epoch_covers_every_training_window(stdlib_test):
    seq_len, batch_size = 256, 16
    windows = LMWindows(packed_stream(stdlib_test), seq_len)
    dataset = lm_train_dataset(stdlib_test, seq_len=seq_len, seed=0, batch_size=batch_size)
    expected = sorted(windows[index]["inputs"].tobytes() for index in range(len(windows)))
    assert first_epoch_rows(dataset, len(windows), batch_size) == expected


def test_host_shards_split_the_windows(stdlib_test):
    seq_len, process_count = 512, 2
    windows = LMWindows(packed_stream(stdlib_test), seq_len)
    for process_index in range(process_count):
        dataset = lm_train_dataset(
            stdlib_test, seq_len=seq_len, seed=0, batch_size=8, process_index=process_index, process_count=process_count
        )
        shard = range(process_index, len(windows), process_count)
        expected = sorted(windows[index]["inputs"].tobytes() for index in shard)
        assert first_epoch_rows(dataset, len(shard), 8) == expected


def test_eval_batches_score_every_target_exactly_once(stdlib_test):
    stream = packed_stream(stdlib_test)
    batches = list(lm_eval_batches(stdlib_test, seq_len=100, batch_size=32))
    assert all(batch["inputs"].shape == (32, 100) for batch in batches)
    inputs = np.concatenate([batch["inputs"][batch["mask"]] for batch in batches])
    targets = np.concatenate([batch["targets"][batch["mask"]] for batch in batches])
    np.testing.assert_array_equal(inputs, stream[:-1])
    np.testing.assert_array_equal(targets, stream[1:])


def test_eval_batches_stop_at_max_batches(stdlib_test):
    assert len(list(lm_eval_batches(stdlib_test, seq_len=64, batch_size=8, max_batches=3))) == 3

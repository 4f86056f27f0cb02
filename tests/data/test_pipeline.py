"""Classification pipelines: batch format, seeded random access, epochs, shards, eval padding."""

import numpy as np
import pytest

from jdistill.data import classification_eval_batches, classification_train_dataset, pipeline


def indexed_source(num_examples: int) -> list[dict]:
    """A plain source whose label is its index, so batches show which examples they hold."""
    return [{"image": np.full((2, 2, 1), index % 256, np.uint8), "label": index} for index in range(num_examples)]


def labels_of_steps(dataset, num_steps: int) -> np.ndarray:
    return np.concatenate([dataset[step]["labels"] for step in range(num_steps)])


def test_train_batch_format(digits_train):
    batch = classification_train_dataset(digits_train, seed=0, batch_size=32)[5]
    assert set(batch) == {"inputs", "labels", "index"}
    assert batch["inputs"].dtype == np.float32 and batch["inputs"].shape == (32, 8, 8, 1)
    assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (32,)
    assert batch["inputs"].min() >= 0.0 and batch["inputs"].max() == 1.0  # digits: divided by 16


@pytest.mark.parametrize("num_examples", [100, 101])
def test_index_is_the_position_in_the_training_split(num_examples, monkeypatch):
    monkeypatch.setattr(pipeline, "IN_MEMORY_MAX_EXAMPLES", 100)  # 101 examples take the streaming path
    source = indexed_source(num_examples)
    dataset = classification_train_dataset(source, seed=3, batch_size=10)
    for step in (0, 9, 10, 25):
        batch = dataset[step]
        assert batch["index"].dtype == np.int32
        np.testing.assert_array_equal(batch["index"], batch["labels"])  # the label is the position here


def test_uint8_images_without_metadata_are_scaled_by_255():
    source = [{"image": np.array([[[255]], [[51]]], np.uint8), "label": 0}] * 4
    batch = classification_train_dataset(source, seed=0, batch_size=2)[0]
    np.testing.assert_allclose(batch["inputs"][0, :, 0, 0], [1.0, 0.2])


def test_explicit_keys_and_scale_override_the_defaults():
    source = [{"pixels": np.full((1, 1, 1), 8, np.uint8), "digit": 3}] * 4
    batch = classification_train_dataset(
        source, seed=0, batch_size=2, image_key="pixels", label_key="digit", image_max_value=16
    )[0]
    assert batch["inputs"][0, 0, 0, 0] == 0.5 and batch["labels"][0] == 3


def test_same_seed_gives_the_same_batch_at_every_step(digits_train):
    first = classification_train_dataset(digits_train, seed=7, batch_size=16)
    second = classification_train_dataset(digits_train, seed=7, batch_size=16)
    for step in (0, 89, 90, 1000):  # 89 straddles the first epoch boundary (1437 / 16)
        np.testing.assert_array_equal(first[step]["inputs"], second[step]["inputs"])
        np.testing.assert_array_equal(first[step]["labels"], second[step]["labels"])


def test_different_seeds_give_different_orders():
    source = indexed_source(100)
    seed_0 = labels_of_steps(classification_train_dataset(source, seed=0, batch_size=10), 20)
    seed_1 = labels_of_steps(classification_train_dataset(source, seed=1, batch_size=10), 20)
    assert not np.array_equal(seed_0, seed_1)
    assert not np.array_equal(seed_0[100:], seed_1[:100])  # seeds are not epochs of one another


@pytest.mark.parametrize("num_examples, batch_size", [(50, 5), (47, 5)])
def test_each_epoch_is_a_fresh_permutation(num_examples, batch_size):
    dataset = classification_train_dataset(indexed_source(num_examples), seed=3, batch_size=batch_size)
    stream = labels_of_steps(dataset, -(-3 * num_examples // batch_size))
    epochs = [stream[epoch * num_examples : (epoch + 1) * num_examples] for epoch in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(num_examples))
    assert not np.array_equal(epochs[0], epochs[1])


def test_host_shards_are_disjoint_and_cover_the_source():
    num_examples, process_count = 61, 3
    shards = []
    for process_index in range(process_count):
        dataset = classification_train_dataset(
            indexed_source(num_examples),
            seed=0,
            batch_size=1,
            process_index=process_index,
            process_count=process_count,
        )
        shard_size = len(range(process_index, num_examples, process_count))
        shard = labels_of_steps(dataset, shard_size)
        assert sorted(shard) == list(range(process_index, num_examples, process_count))
        shards.append(set(shard))
    assert set.union(*shards) == set(range(num_examples))
    assert sum(map(len, shards)) == num_examples


def test_invalid_process_index_is_rejected():
    with pytest.raises(ValueError, match="process_index 2"):
        classification_train_dataset(indexed_source(10), seed=0, batch_size=2, process_index=2, process_count=2)


def test_eval_batches_cover_every_example_once_in_order():
    batches = list(classification_eval_batches(indexed_source(47), batch_size=10))
    assert len(batches) == 5
    for batch in batches:
        assert batch["inputs"].shape == (10, 2, 2, 1) and batch["mask"].dtype == np.bool_
    labels = np.concatenate([batch["labels"][batch["mask"]] for batch in batches])
    np.testing.assert_array_equal(labels, np.arange(47))
    assert batches[-1]["mask"].tolist() == [True] * 7 + [False] * 3


def test_eval_batches_on_digits_test(digits_test):
    batches = list(classification_eval_batches(digits_test, batch_size=64))
    assert sum(int(batch["mask"].sum()) for batch in batches) == 360
    assert all(batch["inputs"].shape == (64, 8, 8, 1) for batch in batches)


def test_in_memory_gather_path_equals_per_example_path(digits_train, monkeypatch):
    fast = classification_train_dataset(digits_train, seed=3, batch_size=32)
    monkeypatch.setattr(pipeline, "IN_MEMORY_MAX_EXAMPLES", 0)
    slow = classification_train_dataset(digits_train, seed=3, batch_size=32)
    for step in (0, 1, 44, 45, 90):
        for key in ("inputs", "labels"):
            np.testing.assert_array_equal(fast[step][key], slow[step][key])

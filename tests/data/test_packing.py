"""Packed LM windows: shifted targets, document boundaries (segment ids, positions, mask), loss spans, eval cover."""

import numpy as np
import pytest

from jdistill.data import lm_eval_batches, lm_train_dataset
from jdistill.data.packing import PackedWindows
from tests.data.lm_fixtures import tokenized_split

TEXTS = ["abcdefg", "hij", "klmnopqrstu", "vw", "xyz0123456789"]


@pytest.fixture
def text_split(tmp_path):
    return tokenized_split(tmp_path, [{"text": text} for text in TEXTS])


def stream_of(texts) -> np.ndarray:
    """The virtual stream: each document's bytes then EOS (0)."""
    return np.frombuffer("".join(text + "\0" for text in texts).encode(), np.uint8).astype(np.int32)


def test_windows_are_aligned_slices_of_the_stream_with_shifted_targets(text_split):
    stream = stream_of(TEXTS)
    windows = PackedWindows(text_split, 6)
    assert len(windows) == (len(stream) - 1) // 6
    for index in range(len(windows)):
        window = windows[index]
        np.testing.assert_array_equal(window["inputs"], stream[index * 6 : index * 6 + 6])
        np.testing.assert_array_equal(window["targets"], stream[index * 6 + 1 : index * 6 + 7])


def test_segments_positions_and_mask_follow_document_boundaries(text_split):
    window = PackedWindows(text_split, 12)[0]  # "abcdefg\0hij\0" -> targets "bcdefg\0hij\0k"
    np.testing.assert_array_equal(window["segment_ids"], [1] * 8 + [2] * 4)
    np.testing.assert_array_equal(window["positions"], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3])
    # The EOS ending a document is a target; the next document's first token is not (no context to predict it).
    np.testing.assert_array_equal(window["mask"], [True] * 7 + [False] + [True] * 3 + [False])


def test_a_window_starting_mid_document_continues_its_positions(text_split):
    window = PackedWindows(text_split, 5)[3]  # stream[15:20]: "mnopq" of document 3 (which starts at 12)
    np.testing.assert_array_equal(window["positions"], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(window["segment_ids"], [1] * 5)
    assert window["mask"].all()


def test_prompt_completion_loss_covers_the_completion_and_its_eos(tmp_path):
    split = tokenized_split(tmp_path, [{"prompt": "Q:ab", "completion": "xyz"}, {"prompt": "Q:c", "completion": "w"}])
    window = PackedWindows(split, 13, include_partial_tail=True)[0]
    # stream "Q:abxyz\0Q:cw\0": targets are the next tokens; loss on x y z EOS and w EOS only.
    expected = [False, False, False, True, True, True, True, False, False, False, True, True, False]
    np.testing.assert_array_equal(window["mask"], expected)


def test_chat_loss_covers_the_assistant_tokens_only(tmp_path):
    from jdistill.text import load_tokenizer

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    split = tokenized_split(tmp_path, [{"messages": messages}])
    ids, assistant = load_tokenizer("bytes").encode_chat(messages)
    window = PackedWindows(split, len(ids), include_partial_tail=True)[0]
    # target i is token i + 1: in the loss iff that token is an assistant token (the closing EOS: iff the last is)
    expected = np.concatenate([assistant[1:], [assistant[-1]]])
    np.testing.assert_array_equal(window["mask"], expected)
    assert window["mask"].any() and not window["mask"].all()


def test_eval_batches_score_every_target_exactly_once(text_split):
    stream = stream_of(TEXTS)
    windows = PackedWindows(text_split, 7, include_partial_tail=True)
    batches = list(lm_eval_batches(windows, batch_size=4))
    real = [batch["segment_ids"] > 0 for batch in batches]
    inputs = np.concatenate([batch["inputs"][keep] for batch, keep in zip(batches, real, strict=True)])
    targets = np.concatenate([batch["targets"][keep] for batch, keep in zip(batches, real, strict=True)])
    np.testing.assert_array_equal(inputs, stream[:-1])
    np.testing.assert_array_equal(targets, stream[1:])
    masked = sum(int(batch["mask"].sum()) for batch in batches)
    assert masked == len(stream) - 1 - (len(TEXTS) - 1)  # all but the documents' first tokens (after an EOS)
    assert not any(batch["mask"][~keep].any() for batch, keep in zip(batches, real, strict=True))


def test_train_batches_are_a_pure_function_of_seed_and_step(text_split):
    windows = PackedWindows(text_split, 4)
    first, second = (lm_train_dataset(windows, seed=1, batch_size=3)[7] for _ in range(2))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert set(first) == {"inputs", "targets", "mask", "segment_ids", "positions"}
    assert first["inputs"].dtype == np.int32 and first["segment_ids"].dtype == np.int32
    firsts = [lm_train_dataset(windows, seed=seed, batch_size=3)[step]["inputs"] for seed in (1, 2) for step in (0, 1)]
    assert not all(np.array_equal(firsts[0], other) for other in firsts[1:])


def test_each_epoch_covers_every_window_and_hosts_split_them(text_split):
    windows = PackedWindows(text_split, 3)
    everything = sorted(windows[index]["inputs"].tobytes() for index in range(len(windows)))
    per_host = []
    for process_index in range(2):
        dataset = lm_train_dataset(windows, seed=0, batch_size=1, process_index=process_index, process_count=2)
        shard = range(process_index, len(windows), 2)
        rows = sorted(dataset[step]["inputs"][0].tobytes() for step in range(len(shard)))
        assert rows == sorted(windows[index]["inputs"].tobytes() for index in shard)
        per_host += rows
    assert sorted(per_host) == everything

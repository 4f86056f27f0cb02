"""Prompt layout batches (recipes with `batch_layout = "prompt_completion"`, e.g. on-policy GKD), width S = P + C:

    prompt          int32 [B, P]  left-padded with pad_id      prompt_mask     bool [B, P]  True on real tokens
    completion      int32 [B, C]  right-padded with pad_id     completion_mask bool [B, C]  True on real tokens

P = `data.max_prompt_len` (default seq_len // 2), C = seq_len - P. The completion is the document's tokens after
its prompt followed by EOS (the EOS included in `completion_mask`), cut to C tokens. For chat documents the prompt is
everything before the first assistant token. A prompt longer than P is a `DataError` naming the document, raised
when the examples are built (before compute); plain text sources have no prompts (also a `DataError`).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from jdistill.data.pipeline import host_shard, shuffle_seed
from jdistill.data.tokenized import TokenizedSplit
from jdistill.errors import DataError

PROMPT_FIELDS = ("prompt", "prompt_mask", "completion", "completion_mask")


class PromptCompletionExamples(Sequence[dict[str, np.ndarray]]):
    """`examples[i]` -> the prompt-layout fields of document i (each without the batch axis)."""

    def __init__(self, split: TokenizedSplit, prompt_len: int, completion_len: int):
        if split.kind == "text":
            raise DataError(
                f"{split.directory}: a recipe with prompt/completion batches needs prompt/completion or chat data, "
                "but this source is plain text"
            )
        too_long = np.flatnonzero(split.prompt_lengths > prompt_len)
        if len(too_long):
            first = int(too_long[0])
            raise DataError(
                f"{split.directory} ({split.split}) document {first}: prompt of {int(split.prompt_lengths[first])} "
                f"tokens is longer than data.max_prompt_len={prompt_len} ({len(too_long)} such documents)"
            )
        if completion_len < 1:
            raise DataError(f"data.seq_len - data.max_prompt_len = {completion_len}: no room for a completion")
        self.split = split
        self.prompt_len = prompt_len
        self.completion_len = completion_len

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]  # no slicing
        ids, _, prompt_tokens = self.split.document(index)
        return prompt_row(
            ids, prompt_tokens, self.prompt_len, self.completion_len, self.split.eos_id, self.split.pad_id
        )


def prompt_row(ids, prompt_tokens: int, prompt_len: int, completion_len: int, eos_id: int, pad_id: int) -> dict:
    """One example: the prompt left-padded to `prompt_len`, completion + EOS right-padded (cut) to `completion_len`."""
    prompt = ids[:prompt_tokens]
    completion = np.concatenate([ids[prompt_tokens:], [eos_id]])[:completion_len].astype(np.int32)
    left, right = prompt_len - len(prompt), completion_len - len(completion)
    return {
        "prompt": np.pad(prompt, (left, 0), constant_values=pad_id).astype(np.int32),
        "prompt_mask": np.arange(prompt_len) >= left,
        "completion": np.pad(completion, (0, right), constant_values=pad_id),
        "completion_mask": np.arange(completion_len) < len(completion),
    }


def prompt_train_dataset(
    examples: PromptCompletionExamples, *, seed: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """Endless shuffled prompt-layout batches; element `step` is the batch of global step `step` (as LM windows)."""
    return (
        host_shard(grain.MapDataset.source(examples), process_index, process_count)
        .shuffle(seed=shuffle_seed(seed))
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )

"""`samples.jsonl`: greedy completions of fixed prompts, written into each LM stage's folder when it ends.

The prompts are the config's `run.sample_prompts` (encoded with the run's tokenizer, after its BOS when it has
one) or, by default, the openings of the held-out split's first documents (`default_prompts`): the same prompts
for every stage of a run, so the teacher, the scratch student and the distilled student can be read side by side.
Each line: {"stage", "prompt", "completion", "tokens", "stopped"}; `tokens` are the generated ids before the first
EOS, `completion` their decoding, `stopped` whether the model emitted EOS within the budget.
"""

from __future__ import annotations

import numpy as np

from jdistill.errors import ConfigError
from jdistill.io import fs, strict_json
from jdistill.models.generate import generate
from jdistill.models.speculative import self_speculative_generate

DEFAULT_PROMPT_COUNT = 4
DEFAULT_PROMPT_TOKENS = 32


def _documents(eval_batches, eos_id: int):
    """(token ids, loss mask) of each document whose first token (position 0) is in the packed evaluation batches
    (the layout of `jdistill.data.packing`: `segment_ids` number a row's documents, `positions` count from 0 at
    each document's first token), in order, without its closing EOS. A row that starts inside a document (its
    positions continue) does not start that document again."""
    for batch in eval_batches:
        inputs, mask = np.asarray(batch["inputs"]), np.asarray(batch["mask"], bool)
        segments, positions = np.asarray(batch["segment_ids"]), np.asarray(batch["positions"])
        for row in range(inputs.shape[0]):
            for segment in np.unique(segments[row][(positions[row] == 0) & (segments[row] > 0)]):
                tokens, scored = inputs[row][segments[row] == segment], mask[row][segments[row] == segment]
                ends = tokens[-1] == eos_id  # the closing EOS is the document's last input token
                yield tokens[: -1 if ends else None], scored[: -1 if ends else None]


def default_prompts(
    eval_batches, eos_id: int, *, count: int = DEFAULT_PROMPT_COUNT, length: int = DEFAULT_PROMPT_TOKENS
) -> list[np.ndarray]:
    """The openings of the first `count` documents of the held-out split, as token-id arrays: the first `length`
    tokens of a text document; of a prompt/completion document (its first target not scored) its prompt, i.e. its
    tokens up to the first scored target, at most `length`. Deterministic: the evaluation batches are."""
    prompts: list[np.ndarray] = []
    for tokens, scored in _documents(eval_batches, eos_id):
        text = not scored.any() or scored[0]
        cut = length if text else min(int(np.argmax(scored)) + 1, length)
        if len(tokens[:cut]):
            prompts.append(np.asarray(tokens[:cut], np.int32))
        if len(prompts) == count:
            break
    return prompts


def encode_prompts(tokenizer, texts, *, max_len: int, field: str = "run.sample_prompts") -> list[np.ndarray]:
    """Each text encoded (after the tokenizer's BOS when it has one); a prompt longer than `max_len` tokens (the
    model's `max_seq_len`) is a one-line ConfigError naming `field`."""
    prompts = []
    for index, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(text), np.int32)
        if tokenizer.bos_id is not None:
            ids = np.concatenate([np.asarray([tokenizer.bos_id], np.int32), ids])
        if len(ids) == 0:
            raise ConfigError(f"{field}[{index}]: the prompt encodes to no tokens")
        if len(ids) > max_len:
            raise ConfigError(
                f"{field}[{index}]: the prompt is {len(ids)} tokens, longer than the model's max_seq_len {max_len}"
            )
        prompts.append(ids)
    return prompts


def complete(
    model, prompts, *, max_new_tokens: int, eos_id: int, pad_id: int, speculative: dict | None = None, **sampling
) -> list[np.ndarray]:
    """Continue every prompt in one batch (right-padded with `pad_id`); each row's generated ids, kept up to and
    including its first EOS. `sampling`: temperature / top_k / top_p / rng of `generate` (default greedy).
    `speculative`: `exit_layer`, `draft_len` (and `draft_head`) of `models.speculative.self_speculative_generate`,
    which then decodes (same tokens when greedy); its `SpeculativeStats` are stored in `speculative["stats"]`."""
    width = max(len(p) for p in prompts)
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if speculative is None:
        padded = np.full((len(prompts), width), pad_id, np.int32)
        for row, prompt in enumerate(prompts):
            padded[row, : len(prompt)] = prompt
        tokens = np.asarray(
            generate(model, padded, lengths, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, **sampling)
        )
    else:
        left = np.full((len(prompts), width), pad_id, np.int32)
        for row, prompt in enumerate(prompts):
            left[row, width - len(prompt) :] = prompt
        mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
        options = {key: value for key, value in speculative.items() if key != "stats"}
        result, speculative["stats"] = self_speculative_generate(
            model, left, mask, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, **options, **sampling
        )
        tokens = np.asarray(result)
    rows = []
    for row in tokens:
        stops = np.flatnonzero(row == eos_id)
        rows.append(row[: stops[0] + 1] if len(stops) else row)
    return rows


def records_from_rows(tokenizer, prompts, rows, *, stage: str, texts=None) -> list[dict]:
    """One record per prompt from `complete`'s rows: the prompt (`texts[i]`, else the prompt ids decoded without
    BOS / EOS), the completion decoded (ids of a model's padded rows, beyond the tokenizer's vocabulary, stand for
    no text), its ids before EOS, and whether it stopped at EOS."""
    special = {tokenizer.bos_id, tokenizer.eos_id}
    records = []
    for index, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        stopped = bool(len(row) and row[-1] == tokenizer.eos_id)
        tokens = [int(t) for t in (row[:-1] if stopped else row)]
        prompt_text = texts[index] if texts else tokenizer.decode([int(t) for t in prompt if int(t) not in special])
        records.append(
            {
                "stage": stage,
                "prompt": prompt_text,
                "completion": tokenizer.decode([t for t in tokens if t < tokenizer.vocab_size]),  # padded rows: none
                "tokens": tokens,
                "stopped": stopped,
            }
        )
    return records


def sample_records(model, tokenizer, prompts, *, max_new_tokens: int, stage: str, texts=None) -> list[dict]:
    """Greedy completions of `prompts` as `samples.jsonl` records (see the module docstring)."""
    rows = complete(model, prompts, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    return records_from_rows(tokenizer, prompts, rows, stage=stage, texts=texts)


def write_samples(path, records: list[dict]) -> None:
    """`path` (samples.jsonl, local or gs://), strict JSON written atomically (`jdistill.io.fs`)."""
    fs.write_text_atomic(path, "".join(strict_json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def stage_prompts(run_config, tokenizer, eval_batches, *, max_seq_len: int):
    """(prompt id arrays, their texts or None) of a run's samples: `run.sample_prompts` encoded, else the
    held-out openings. Called before a stage trains, so a prompt that does not fit fails before compute."""
    if run_config.sample_prompts:
        texts = list(run_config.sample_prompts)
        return encode_prompts(tokenizer, texts, max_len=max_seq_len), texts
    return default_prompts(eval_batches, tokenizer.eos_id), None

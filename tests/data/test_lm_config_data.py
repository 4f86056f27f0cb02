"""A training config's LM data: raw text tokenised once into the cache, vocabulary and tokenizer checks before any
stage trains, and prompt/completion batches."""

import dataclasses

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.configs.schema import DataConfig
from jdistill.data.prompts import PromptCompletionExamples, prompt_train_dataset
from jdistill.errors import ConfigError, DataError
from jdistill.recipes.base import RecipeBase
from jdistill.text import train_tokenizer
from jdistill.train import inputs
from jdistill.train.job import run_job
from tests.data.lm_fixtures import tokenized_split, write_jsonl


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer (a few hundred ids: more than the bytes models' 256)."""
    out = tmp_path_factory.mktemp("bpe") / "tok"
    texts = [f"def function_{i}(argument):\n    return argument + {i}\n" for i in range(200)]
    train_tokenizer(texts, 300, out)
    return out


def lm_config(tmp_path, data_name, **data):
    config = load_config(
        "lm_kd", [f"{s}.train.{k}=1" for s in ("teacher", "student") for k in ("steps", "warmup_steps")]
    )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, name=data_name, **data))


def test_a_tokenizer_larger_than_the_model_vocabulary_fails_before_the_run_dir(tmp_path, bpe_dir):
    write_jsonl(tmp_path / "raw" / "train" / "a.jsonl", [{"text": "def f(x): return x"}] * 3)
    write_jsonl(tmp_path / "raw" / "test" / "a.jsonl", [{"text": "def g(): pass"}])
    config = lm_config(tmp_path, f"files:{tmp_path}/raw/{{split}}/*.jsonl", tokenizer=str(bpe_dir), dir=str(tmp_path))
    # the job: the vocabulary policy's check (the tokenizer file itself) comes first, before the run dir
    with pytest.raises(ConfigError, match=r"its vocabulary \(3\d\d ids\) exceeds student.model.vocab_size \(256"):
        run_job(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the data check reads the tokenised data's own metadata (a `tokenized:DIR` may come without tokenizer files)
    with pytest.raises(DataError, match=r"has 3\d\d ids but model.vocab_size is 256"):
        inputs.check_lm_vocab(config.data, config.student.model)
    # the raw text was tokenised once into the data dir's cache, with the BPE tokenizer
    (cached,) = [path for path in (tmp_path / "tokenized").iterdir() if path.is_dir()]
    assert cached.name.startswith("files_") and (cached / "metadata.json").exists()


def test_a_tokenised_folder_read_with_another_tokenizer_is_refused(tmp_path, bpe_dir):
    split = tokenized_split(tmp_path, [{"text": "abc"}])
    data = DataConfig(name=f"tokenized:{split.directory}", tokenizer=str(bpe_dir), seq_len=4)
    with pytest.raises(DataError, match=r"tokenised with 'bytes' .* but data.tokenizer is"):
        inputs.train_examples(data, "lm")
    assert inputs.train_examples(dataclasses.replace(data, tokenizer="bytes"), "lm") == 1


def test_prompt_layout_batches_left_pad_prompts_and_right_pad_completions(tmp_path):
    split = tokenized_split(tmp_path, [{"prompt": "abc", "completion": "de"}, {"prompt": "f", "completion": "ghijk"}])
    examples = PromptCompletionExamples(split, prompt_len=4, completion_len=4)
    first, second = examples[0], examples[1]
    assert bytes(first["prompt"].astype(np.uint8)) == b"\0abc" and first["prompt_mask"].tolist() == [0, 1, 1, 1]
    assert bytes(first["completion"].astype(np.uint8)) == b"de\0\0"
    assert first["completion_mask"].tolist() == [1, 1, 1, 0]  # "d", "e" and the EOS
    assert second["prompt_mask"].tolist() == [0, 0, 0, 1] and second["completion_mask"].all()  # cut to 4
    batch = prompt_train_dataset(examples, seed=0, batch_size=2)[3]
    assert {key: value.shape for key, value in batch.items()} == {
        "prompt": (2, 4), "prompt_mask": (2, 4), "completion": (2, 4), "completion_mask": (2, 4),
    }  # fmt: skip


def test_a_prompt_longer_than_max_prompt_len_is_a_one_line_error(tmp_path):
    split = tokenized_split(tmp_path, [{"prompt": "ab", "completion": "c"}, {"prompt": "abcdef", "completion": "g"}])
    with pytest.raises(DataError, match=r"document 1: prompt of 6 tokens is longer than data.max_prompt_len=4"):
        PromptCompletionExamples(split, prompt_len=4, completion_len=4)
    text = tokenized_split(tmp_path / "text", [{"text": "plain"}])
    with pytest.raises(DataError, match="needs prompt/completion or chat data"):
        PromptCompletionExamples(text, prompt_len=4, completion_len=4)


def test_recipes_default_to_packed_batches():
    assert RecipeBase.batch_layout == "packed"

"""A generating recipe (GKD) takes its EOS and padding ids from the data tokenizer unless they are set."""

from __future__ import annotations

import json

import pytest

from jdistill.configs import load_config
from jdistill.data.lm import tokenized_dir
from jdistill.errors import DataError
from jdistill.text import load_tokenizer, train_tokenizer
from jdistill.train import inputs
from jdistill.train.job import checked_recipe


def test_gkd_stops_at_the_byte_tokenizers_eos_unless_told():
    recipe = checked_recipe(load_config("gkd"))
    assert (recipe.eos_id, recipe.pad_id) == (0, 0)
    recipe = checked_recipe(load_config("gkd", ["distill.options.eos_id=10", "distill.options.pad_id=32"]))
    assert (recipe.eos_id, recipe.pad_id) == (10, 32)


def test_gkd_stops_at_a_trained_tokenizers_eos(tmp_path):
    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.sep)\n"] * 10
    train_tokenizer(texts, 300, tmp_path / "tok")
    settings = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    settings.update(eos_token="<|im_end|>", pad_token="<|im_start|>")  # as chat checkpoints name them
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert (tokenizer.eos_id, tokenizer.pad_id) == (2, 1)
    config = load_config(
        "gkd", [f"data.tokenizer={tmp_path / 'tok'}", "teacher.model.vocab_size=300", "student.model.vocab_size=300"]
    )
    recipe = checked_recipe(config)
    assert (recipe.eos_id, recipe.pad_id) == (2, 1)


def test_classifier_recipes_are_left_alone():
    assert not hasattr(checked_recipe(load_config("default")), "eos_id")


def test_evaluation_windows_without_a_scored_token_are_refused_before_training():
    config = load_config(
        "gkd", ["data.seq_len=96", "data.max_prompt_len=64", "data.eval_batch_size=4", "data.eval_max_batches=1"]
    )
    tokenized_dir("pystdlib_functions", "bytes")
    with pytest.raises(DataError, match=r"data.eval_max_batches=1 x data.eval_batch_size=4: .* no scored token"):
        inputs.check_data(config, checked_recipe(config))

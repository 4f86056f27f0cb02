"""Greedy generation from imported checkpoints equals transformers' greedy generation."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jdistill.hf import from_pretrained
from jdistill.models.generate import generate

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["llama", "qwen3", "qwen3_next"])
def test_greedy_generation_matches_transformers(name):
    model = from_pretrained(FIXTURES / name)
    data = load_file(str(FIXTURES / name / "expected.safetensors"))
    prompts, prompt_len = data["input_ids"], data["input_ids"].shape[1]
    new_tokens = data["greedy"].shape[1] - prompt_len
    np.testing.assert_array_equal(generate(model, prompts, max_new_tokens=new_tokens), data["greedy"][:, prompt_len:])
    short_len = data["greedy_short"].shape[1] - new_tokens
    padded = prompts.copy()
    padded[1, short_len:] = 0
    mixed = np.asarray(generate(model, padded, [prompt_len, short_len], max_new_tokens=new_tokens))
    np.testing.assert_array_equal(mixed[0], data["greedy"][0, prompt_len:])
    np.testing.assert_array_equal(mixed[1], data["greedy_short"][0, short_len:])

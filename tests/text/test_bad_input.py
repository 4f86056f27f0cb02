"""Bad input to jdistill.text: each a one-line TokenizerError (a ConfigError, so the CLI exits 2) naming what is
wrong and where."""

import json
import shutil

import pytest

from jdistill.errors import ConfigError
from jdistill.text import TokenizerError, load_tokenizer, train_tokenizer
from tests.text.conftest import FIXTURES


def _error(call, *args) -> str:
    with pytest.raises(TokenizerError) as caught:
        call(*args)
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and "\n" not in message and message
    return message


@pytest.fixture
def tok_dir(tmp_path):
    directory = tmp_path / "tok"
    shutil.copytree(FIXTURES / "chatml", directory)
    return directory


def test_missing_tokenizer_json_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    message = _error(load_tokenizer, f"hf:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty" / "tokenizer.json") in message and "not found" in message
    (tmp_path / "empty" / "tokenizer.model").write_bytes(b"\0")
    assert "SentencePiece" in _error(load_tokenizer, str(tmp_path / "empty"))


def test_missing_directory_and_unknown_spec(tmp_path):
    assert str(tmp_path / "nope") in _error(load_tokenizer, f"hf:{tmp_path / 'nope'}")
    assert "does not exist" in _error(load_tokenizer, str(tmp_path / "nope"))
    assert "unknown tokenizer 'gpt2'" in _error(load_tokenizer, "gpt2")
    assert "hf:DIR" in _error(load_tokenizer, "hf:")
    assert "non-empty string" in _error(load_tokenizer, "")
    assert "is a file" in _error(load_tokenizer, str(FIXTURES / "chat_expected.json"))


@pytest.mark.parametrize("file_name", ["tokenizer.json", "tokenizer_config.json"])
def test_invalid_json_names_file_and_line(tok_dir, file_name):
    (tok_dir / file_name).write_text('{\n  "a": 1,\n  oops\n}')
    message = _error(load_tokenizer, str(tok_dir))
    assert f"{tok_dir / file_name}: invalid JSON at line 3" in message


def test_json_that_is_not_a_tokenizer(tok_dir):
    (tok_dir / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Nope"}}))
    assert "not a tokenizers tokenizer file" in _error(load_tokenizer, str(tok_dir))
    (tok_dir / "tokenizer.json").write_text("[1, 2]")
    assert "tokenizer.json" in _error(load_tokenizer, str(tok_dir))


def test_config_that_is_not_an_object_or_names_unknown_tokens(tok_dir):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    (tok_dir / "tokenizer_config.json").write_text("[]")
    assert "expected a JSON object" in _error(load_tokenizer, str(tok_dir))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    assert "eos_token '<|nope|>' is not in the vocabulary" in _error(load_tokenizer, str(tok_dir))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": 3}))
    assert "tokenizer_config.json:chat_template: expected a string" in _error(load_tokenizer, str(tok_dir))


def test_eos_falls_back_to_the_model_config_else_errors(tok_dir):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert "no eos_token" in _error(load_tokenizer, str(tok_dir))
    (tok_dir / "config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert load_tokenizer(str(tok_dir)).eos_id == 2


def test_vocab_size_too_small_for_training(tmp_path):
    assert "vocab_size 258 is too small" in _error(train_tokenizer, ["abc"], 258, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_training_refuses_a_non_empty_output_and_empty_text(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "already exists" in _error(train_tokenizer, ["abc"], 300, tmp_path / "full")
    assert "no text" in _error(train_tokenizer, ["", ""], 300, tmp_path / "empty_text")
    assert "text 1 is a bytes" in _error(train_tokenizer, ["a", b"b"], 300, tmp_path / "bytes_text")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]  # nothing half-written


def test_added_tokens_declared_in_the_config(tok_dir):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    size = load_tokenizer(str(tok_dir)).vocab_size
    declared = {"2": {"content": "<|im_end|>", "special": True}, str(size): {"content": "<tool>", "special": True}}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": declared}))
    tok = load_tokenizer(str(tok_dir))
    assert tok.vocab_size == size + 1 and tok.encode("a<tool>").tolist()[-1] == size
    assert tok.token_byte_lengths()[size] == 0
    declared = {str(size + 5): {"content": "<tool>"}}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": declared}))
    assert f"declares '<tool>' as id {size + 5}, but tokenizer.json gives it id {size}" in _error(
        load_tokenizer, str(tok_dir)
    )


def test_training_into_an_output_filled_meanwhile_fails_cleanly(tmp_path):
    out = tmp_path / "race"

    def texts():
        yield "abc abc abd"
        out.mkdir()
        (out / "tokenizer.json").write_text("{}")  # another process finished first

    assert "was filled while training" in _error(train_tokenizer, texts(), 300, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["race"]
    assert [path.name for path in out.iterdir()] == ["tokenizer.json"]


def test_training_into_an_existing_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert train_tokenizer(["abc abc abd"], 300, tmp_path / "empty").vocab_size <= 300
    assert sorted(path.name for path in (tmp_path / "empty").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]

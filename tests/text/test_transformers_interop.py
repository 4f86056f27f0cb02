"""Directories jdistill writes load in `transformers` (where it is installed) and give the same ids and chats."""

import pytest

from jdistill.text import load_tokenizer

transformers = pytest.importorskip("transformers")

TEXT = "def f(x):\n    return x  # héllo <|im_end|> 🎉\n"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello 🎉"}]


@pytest.mark.parametrize("kind", ["trained", "bytes"])
def test_saved_directory_loads_in_transformers(trained, tmp_path, kind):
    tok = trained if kind == "trained" else load_tokenizer("bytes")
    tok.save(tmp_path / kind)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / kind))
    assert hf.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT).tolist()
    assert (hf.eos_token_id, hf.pad_token_id) == (tok.eos_id, tok.pad_id)
    assert hf.decode(tok.encode(TEXT)) == TEXT
    assert hf.apply_chat_template(CHAT, tokenize=False) == tok.render_chat(CHAT)
    assert hf.apply_chat_template(CHAT, return_dict=True)["input_ids"] == tok.encode_chat(CHAT)[0].tolist()

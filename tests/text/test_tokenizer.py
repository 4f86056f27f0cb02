"""The Tokenizer interface on both kinds: ids, EOS/pad, save/load, fingerprint and exact byte lengths."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.text import Tokenizer, TokenizerError, load_tokenizer, train_tokenizer
from jdistill.text.byte_level import byte_level_alphabet

SAMPLE = "def f(x):\n    return x + 1  # naïve café 数据 🎉\n"


def test_bytes_tokenizer_is_one_id_per_utf8_byte():
    tok = load_tokenizer("bytes")
    assert isinstance(tok, Tokenizer) and tok.kind == "bytes" and tok.vocab_size == 256
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.fingerprint) == (None, 0, 0, "bytes-v1")
    ids = tok.encode(SAMPLE)
    assert ids.dtype == np.int32 and ids.tolist() == list(SAMPLE.encode())
    assert tok.decode(ids) == SAMPLE
    assert [a.tolist() for a in tok.encode_batch(["ab", "é"])] == [[97, 98], [0xC3, 0xA9]]
    lengths = tok.token_byte_lengths()
    assert lengths.shape == (256,) and lengths[0] == 0 and (lengths[1:] == 1).all()


def test_trained_tokenizer_attributes_and_round_trip(trained, test_texts):
    assert trained.kind == "bpe" and trained.vocab_size == 2048 and trained.bos_id is None
    assert trained.eos_id == trained.pad_id == trained.backend.token_to_id("<|endoftext|>") == 0
    for text in [SAMPLE, *test_texts[:5]]:
        ids = trained.encode(text)
        assert ids.dtype == np.int32 and ids.max() < trained.vocab_size
        assert trained.decode(ids) == text
        assert len(ids) < len(text.encode())  # it compresses
    batch = trained.encode_batch(test_texts[:3])
    assert all(np.array_equal(a, trained.encode(t)) for a, t in zip(batch, test_texts[:3], strict=True))


def test_decode_skips_special_tokens(trained):
    ids = np.concatenate([trained.encode("ab"), [trained.eos_id], trained.encode("c")])
    assert trained.decode(ids) == "abc"


def test_fingerprint_is_stable_across_save_and_load(trained, tmp_path):
    trained.save(tmp_path / "copy")
    again = load_tokenizer(f"hf:{tmp_path / 'copy'}")
    assert again.fingerprint == trained.fingerprint == load_tokenizer(trained.name).fingerprint
    assert len(trained.fingerprint) == 64 and int(trained.fingerprint, 16) >= 0
    assert again.encode(SAMPLE).tolist() == trained.encode(SAMPLE).tolist()
    assert (again.eos_id, again.pad_id, again.chat_template) == (trained.eos_id, trained.pad_id, trained.chat_template)


def test_fingerprint_ignores_json_layout_but_not_the_mapping(trained, tmp_path):
    directory = tmp_path / "reformatted"
    directory.mkdir()
    spec = json.loads(trained.backend.to_str())
    (directory / "tokenizer.json").write_text(json.dumps(spec, indent=4, sort_keys=True))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    assert load_tokenizer(str(directory)).fingerprint == trained.fingerprint
    first = next(iter(spec["model"]["vocab"]))
    spec["model"]["vocab"][first + "x"] = spec["model"]["vocab"].pop(first)
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    assert load_tokenizer(str(directory)).fingerprint != trained.fingerprint


def test_canonical_hash_ignores_key_order_and_layout():
    from jdistill.text.bpe import canonical_sha256

    assert canonical_sha256('{"b": [1, {"y": 2, "x": "é"}], "a": null}') == canonical_sha256(
        '{\n "a": null,\n "b": [1, {"x": "\\u00e9", "y": 2}]}'
    )
    assert canonical_sha256('{"a": [1, 2]}') != canonical_sha256('{"a": [2, 1]}')
    # The definition: sorted keys, no whitespace, UTF-8 (not \u escapes).
    assert canonical_sha256('{"b": "é", "a": 1}') == hashlib.sha256('{"a":1,"b":"é"}'.encode()).hexdigest()


def test_training_is_deterministic(train_texts, tmp_path):
    texts = train_texts[:40]
    first = train_tokenizer(texts, 600, tmp_path / "a")
    second = train_tokenizer(texts, 600, tmp_path / "b")
    assert first.fingerprint == second.fingerprint and first.vocab_size == 600
    assert train_tokenizer(texts, 700, tmp_path / "c").fingerprint != first.fingerprint


def test_saved_directory_has_chatml_template_and_named_tokens(trained):
    config = json.loads((Path(trained.name) / "tokenizer_config.json").read_text())
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>"
    assert "<|im_start|>" in config["chat_template"]
    assert not [path for path in Path(trained.name).parent.iterdir() if ".tmp" in path.name]


def test_byte_level_alphabet_is_a_bijection_onto_bytes():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256)) and len(alphabet) == 256
    assert alphabet["A"] == 65 and alphabet["Ġ"] == 32 and alphabet["Ċ"] == 10


def _bytes_of_ids(tok, ids) -> int:
    return int(tok.token_byte_lengths()[ids].sum())


def test_token_byte_lengths_sum_to_the_utf8_length_on_the_corpus(trained, test_texts):
    lengths = trained.token_byte_lengths()
    assert lengths.shape == (trained.vocab_size,) and lengths.dtype == np.int32
    assert lengths[trained.eos_id] == 0 and (lengths[lengths > 0] >= 1).all()
    for text in test_texts:
        assert _bytes_of_ids(trained, trained.encode(text, split_special_tokens=True)) == len(text.encode()), text[:40]
    bytes_tok = load_tokenizer("bytes")
    assert all(_bytes_of_ids(bytes_tok, bytes_tok.encode(t)) == len(t.encode()) for t in test_texts[:5])


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=80))
def test_token_byte_lengths_sum_to_the_utf8_length_on_random_text(trained, text):
    for tok in (trained, load_tokenizer("bytes")):
        ids = tok.encode(text, split_special_tokens=True)
        assert _bytes_of_ids(tok, ids) == len(text.encode())
        assert tok.decode(ids) == text


def test_special_token_text_is_matched_unless_split(trained):
    """As transformers' `tokenizer(text)`: `<|im_end|>` in a text is the special token (chat renders rely on it);
    `split_special_tokens=True` encodes it as the text it is."""
    text = "a<|im_end|>b"
    end = trained.backend.token_to_id("<|im_end|>")
    assert end in trained.encode(text).tolist() and end in trained.encode_batch([text])[0].tolist()
    literal = trained.encode(text, split_special_tokens=True)
    assert end not in literal.tolist() and trained.decode(literal) == text
    assert trained.encode_batch([text], split_special_tokens=True)[0].tolist() == literal.tolist()
    assert _bytes_of_ids(trained, literal) == len(text)
    assert end in trained.encode(text).tolist()  # the shared backend is unchanged


def test_non_special_added_tokens_count_their_content(trained, tmp_path):
    backend = trained.backend.__class__.from_str(trained.backend.to_str())
    backend.add_tokens(["<think>"])
    backend.add_special_tokens(["<|sep|>"])
    directory = tmp_path / "added"
    directory.mkdir()
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = load_tokenizer(str(directory))
    assert tok.vocab_size == trained.vocab_size + 2
    text = "a <think> b <|sep|> c"
    ids = tok.encode(text)
    assert tok.backend.token_to_id("<think>") in ids.tolist()
    assert _bytes_of_ids(tok, ids) == len(text.encode()) - len("<|sep|>")


def test_bytes_tokenizer_saves_an_equivalent_hf_directory(tmp_path):
    bytes_tok = load_tokenizer("bytes")
    bytes_tok.save(tmp_path / "bytes")
    reloaded = load_tokenizer(f"hf:{tmp_path / 'bytes'}")
    assert reloaded.vocab_size == 256 and reloaded.eos_id == 0 and reloaded.pad_id == 0
    assert reloaded.encode(SAMPLE).tolist() == bytes_tok.encode(SAMPLE).tolist()
    assert reloaded.decode(bytes_tok.encode(SAMPLE)) == SAMPLE


def test_bytes_decode_rejects_out_of_range_ids():
    with pytest.raises(TokenizerError, match=r"\[0, 255\]"):
        load_tokenizer("bytes").decode([65, 300])


def test_sentencepiece_style_byte_lengths(tmp_path):
    """Metaspace + byte fallback (Llama 2 style): `▁` is a space, `<0xNN>` one byte, specials 0."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}, "▁the": 258, "é": 259, "▁": 260}
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens(["</s>"])
    (tmp_path / "sp").mkdir()
    backend.save(str(tmp_path / "sp" / "tokenizer.json"))
    (tmp_path / "sp" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    lengths = load_tokenizer(str(tmp_path / "sp")).token_byte_lengths()
    assert lengths[[1, 2 + 0x0A, 258, 259, 260]].tolist() == [0, 1, 4, 2, 1]


def test_tokenizers_pickle(trained):
    """Data loader workers receive the tokenizer pickled."""
    import pickle

    trained.encode("x", split_special_tokens=True)  # the lazily built copy travels too
    for tok in (trained, load_tokenizer("bytes")):
        copy = pickle.loads(pickle.dumps(tok))
        assert copy.encode(SAMPLE).tolist() == tok.encode(SAMPLE).tolist() and copy.fingerprint == tok.fingerprint
        assert copy.encode_chat([{"role": "assistant", "content": "x"}])[1].any()

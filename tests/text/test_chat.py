"""Chat templates: rendering and ids equal to what `transformers.apply_chat_template` gives (a committed fixture,
tests/text/fixtures/make_chat_fixture.py), and the assistant mask."""

import json
import shutil

import numpy as np
import pytest

from jdistill.text import TokenizerError, load_tokenizer
from tests.text.conftest import FIXTURES

EXPECTED = json.loads((FIXTURES / "chat_expected.json").read_text(encoding="utf-8"))
CASES = EXPECTED["cases"]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello there"},
    {"role": "user", "content": "more"},
    {"role": "assistant", "content": "ok"},
]


@pytest.fixture(scope="module")
def fixture_tok():
    return load_tokenizer(f"hf:{FIXTURES / 'chatml'}")


@pytest.fixture(scope="module")
def tagged_tok(tmp_path_factory):
    """The fixture tokenizer with the `{% generation %}`-tagged template in a chat_template.jinja file."""
    directory = tmp_path_factory.mktemp("tagged") / "chatml"
    shutil.copytree(FIXTURES / "chatml", directory)
    (directory / "chat_template.jinja").write_text(EXPECTED["generation_template"], encoding="utf-8")
    return load_tokenizer(str(directory))


def test_fixture_tokenizer_named_tokens(fixture_tok):
    backend = fixture_tok.backend
    assert fixture_tok.bos_id == backend.token_to_id("<s>")
    assert fixture_tok.eos_id == backend.token_to_id("<|im_end|>")
    assert fixture_tok.pad_id == backend.token_to_id("<|endoftext|>")


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_and_ids_equal_transformers(fixture_tok, case):
    expected = CASES[case]
    messages = expected["messages"]
    assert fixture_tok.render_chat(messages) == expected["rendered"]
    assert fixture_tok.render_chat(messages[:-1], add_generation_prompt=True) == expected["rendered_generation_prompt"]
    ids, mask = fixture_tok.encode_chat(messages)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.tolist() == expected["ids"]
    assert fixture_tok.encode(expected["rendered"]).tolist() == expected["ids"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_assistant_mask_equals_transformers_generation_mask(fixture_tok, tagged_tok, case):
    """Without tags (prefix renders) and with `{% generation %}` tags, the mask is transformers' tagged mask."""
    expected = CASES[case]
    for tok in (fixture_tok, tagged_tok):
        ids, mask = tok.encode_chat(expected["messages"])
        assert ids.tolist() == expected["ids"]
        assert mask.astype(int).tolist() == expected["assistant_mask"], tok.chat_template_name


def test_generation_tags_decide_the_mask_when_present(trained):
    """Tags around the content only: the end-of-turn marker is not learned (the template's choice, as in
    transformers), although prefix rendering would include it."""
    template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' }}"
        "{%- if m.role == 'assistant' %}{% generation %}{{- m.content }}{% endgeneration %}"
        "{%- else %}{{- m.content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    )
    ids, mask = _with_template(trained, template).encode_chat(CHAT)
    assert trained.backend.decode(ids[mask].tolist(), skip_special_tokens=False) == "hello thereok"


def test_chat_template_jinja_file_wins_over_the_config(tagged_tok):
    assert tagged_tok.chat_template == EXPECTED["generation_template"]
    assert tagged_tok.chat_template_name.endswith("chat_template.jinja")


def test_mask_covers_content_and_end_of_turn_only(trained):
    text = trained.render_chat(CHAT)
    ids, mask = trained.encode_chat(CHAT)
    assert trained.encode(text).tolist() == ids.tolist()
    assert trained.backend.decode(ids[mask].tolist(), skip_special_tokens=False) == "hello there<|im_end|>ok<|im_end|>"
    end_of_turn = trained.backend.token_to_id("<|im_end|>")
    assert [bool(m) for i, m in zip(ids, mask, strict=True) if i == end_of_turn] == [False, False, True, False, True]


def test_bytes_tokenizer_renders_chatml_and_masks_assistant_bytes():
    tok = load_tokenizer("bytes")
    ids, mask = tok.encode_chat(CHAT)
    assert tok.decode(ids) == tok.render_chat(CHAT)
    assert tok.render_chat(CHAT[:2], add_generation_prompt=True).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert bytes(ids[mask].astype(np.uint8)) == b"hello there<|im_end|>ok<|im_end|>"


def _with_template(tok, template):
    clone = object.__new__(type(tok))
    clone.__dict__.update(tok.__dict__, chat_template=template, chat_template_name="test-template")
    return clone


# A template that, like reasoning models' templates, renders earlier assistant turns without their reasoning and
# the final one with it, so rendering a prefix of the chat is not a prefix of the whole chat's text.
REASONING_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.last and m.reasoning is defined %}{{- '<think>' + m.reasoning + '</think>' }}{%- endif %}"
    "{{- m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_mask_when_earlier_turns_render_differently(trained):
    tok = _with_template(trained, REASONING_TEMPLATE)
    chat = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning": "r1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "reasoning": "r2"},
    ]
    ids, mask = tok.encode_chat(chat)
    assert tok.render_chat(chat).count("<think>") == 1
    masked = tok.backend.decode(ids[mask].tolist(), skip_special_tokens=False)
    assert masked == "a1<|im_end|><think>r2</think>a2<|im_end|>"


def test_mask_starts_at_the_content_when_the_template_ignores_the_generation_prompt(trained):
    no_prompt = REASONING_TEMPLATE.split("{%- if add_generation_prompt")[0]
    ids, mask = _with_template(trained, no_prompt).encode_chat(CHAT)
    assert trained.backend.decode(ids[mask].tolist(), skip_special_tokens=False) == "hello there<|im_end|>ok<|im_end|>"


def test_chat_without_assistant_turn_is_one_line_error(trained):
    with pytest.raises(TokenizerError, match=r"no assistant turn \(roles: system, user\)") as caught:
        trained.encode_chat(CHAT[:2])
    assert "\n" not in str(caught.value)


def test_mask_when_prefixes_cannot_be_rendered(trained):
    """A template that refuses chats not ending with an assistant turn: the turn is found by its content."""
    refuse = "{% if messages[-1].role != 'assistant' %}{{ raise_exception('assistant last') }}{% endif %}"
    ids, mask = _with_template(trained, refuse + REASONING_TEMPLATE).encode_chat(CHAT)
    assert trained.backend.decode(ids[mask].tolist(), skip_special_tokens=False) == "hello there<|im_end|>ok<|im_end|>"


def test_template_that_drops_assistant_text_is_an_error(trained):
    template = "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}"
    with pytest.raises(TokenizerError, match="renders no assistant text"):
        _with_template(trained, template).encode_chat(CHAT)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m.content }", r"line 1"),
        ("{{ raise_exception('roles must alternate') }}", r"roles must alternate"),
        ("{{ messages[0].content + 1 }}", r"test-template"),
        ("{{ ''.__class__.__mro__ }}", r"test-template"),
    ],
)
def test_template_errors_name_the_template(trained, template, message):
    with pytest.raises(TokenizerError, match=message) as caught:
        _with_template(trained, template).render_chat(CHAT)
    assert "test-template" in str(caught.value) and "\n" not in str(caught.value)


def test_error_names_the_fixture_template_file(fixture_tok):
    with pytest.raises(TokenizerError, match=r"chatml/tokenizer_config.json:chat_template: unknown role robot"):
        fixture_tok.render_chat([{"role": "robot", "content": "beep"}])


def test_template_helpers_render_as_transformers_does(trained):
    template = (
        "{{ messages[0].content | tojson }}|{{ strftime_now('%Y') | length }}|{{ eos_token }}|"
        "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.role }}{% break %}{% endfor %}|"
        "{{ dict(a=1).a }}|{{ tools is none }}|{{ documents is none }}|{{ bos_token is defined }}"
    )
    rendered = _with_template(trained, template).render_chat([{"role": "user", "content": "<a & 'b'> é"}, *CHAT])
    assert rendered == "\"<a & 'b'> é\"|4|<|endoftext|>|system|1|True|True|False"


def test_messages_must_be_a_list_of_role_mappings(trained):
    with pytest.raises(TokenizerError, match="non-empty list of messages"):
        trained.render_chat([])
    with pytest.raises(TokenizerError, match="message 1 is not a mapping with a 'role'"):
        trained.render_chat([{"role": "user", "content": "x"}, {"content": "no role"}])


def test_no_chat_template_is_one_line_error(trained):
    with pytest.raises(TokenizerError, match="has no chat template"):
        _with_template(trained, None).encode_chat(CHAT)

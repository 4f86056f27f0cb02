"""Chat templates, rendered the way `transformers.PreTrainedTokenizerBase.apply_chat_template` renders them.

A template is Jinja2 run in `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
`loopcontrols` extension, the globals `raise_exception`, `strftime_now`, `dict`, `namespace`, a `tojson` filter that
does not escape HTML, and the variables `messages`, `add_generation_prompt`, `tools` and `documents` (both None) and
the tokenizer's named special tokens (`bos_token`, `eos_token`, ...). Messages whose keys hold `None` lose those
keys first, as in transformers.

`assistant_spans` finds, in the rendered text, the characters each assistant turn contributes (its content and
its end-of-turn marker): from `{% generation %}` blocks when the template has them (transformers' own mechanism),
else by rendering prefixes of the conversation (see docs/text.md#assistant-mask).
"""

import contextlib
import contextvars
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from jdistill.text.errors import TokenizerError

Span = tuple[int, int]
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# The generation spans of the render in progress (None outside `_tracking`).
_TRACKED: contextvars.ContextVar[tuple[list[str], list[Span]] | None] = contextvars.ContextVar(
    "jdistill_chat_generation_spans", default=None
)

# ChatML, written for jdistill: each message is `<|im_start|>ROLE\nCONTENT<|im_end|>\n`; the generation prompt
# opens an assistant turn. The trained tokenizers and the bytes tokenizer use it.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body and records the body's character span."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_record", []), [], [], body).set_lineno(lineno)

    def _record(self, caller: Any) -> str:
        text = caller()
        tracked = _TRACKED.get()
        if tracked is not None:
            blocks, spans = tracked
            start = sum(len(block) for block in blocks)
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed attributes (no reaching CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        for name in dict(*rest, **kwargs):
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """The compiled template (cached by its text); raises `jinja2.TemplateError` on a syntax error."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = dict
    environment.globals["namespace"] = _Namespace
    return environment.from_string(template)


def normalize_messages(messages: Sequence[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """The messages as plain dicts without `None` values; `TokenizerError` unless each is a mapping with a role."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TokenizerError(f"{source}: a chat is a non-empty list of messages, got {_preview(messages)}")
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TokenizerError(f"{source}: message {index} is not a mapping with a 'role': {_preview(message)}")
        normalized.append({key: value for key, value in message.items() if value is not None})
    return normalized


def render(
    template: str,
    template_name: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    variables: Mapping[str, str],
    spans: list[Span] | None = None,
) -> str:
    """The rendered chat; the spans of `{% generation %}` blocks are appended to `spans` when it is given.

    Any failure (syntax, `raise_exception`, an undefined or mistyped value) is one `TokenizerError` naming
    `template_name`.
    """
    try:
        compiled = compile_template(template)
        context = {
            **variables,
            "messages": messages,
            "tools": None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        blocks: list[str] = []
        with _tracking(blocks, spans if spans is not None else []):
            for block in compiled.generate(**context):
                blocks.append(block)
        return "".join(blocks)
    except Exception as error:
        where = f" (line {error.lineno})" if isinstance(error, jinja2.TemplateSyntaxError) else ""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TokenizerError(f"chat template {template_name}{where}: {message}") from None


@contextlib.contextmanager
def _tracking(blocks: list[str], spans: list[Span]) -> Iterator[None]:
    token = _TRACKED.set((blocks, spans))
    try:
        yield
    finally:
        _TRACKED.reset(token)


def assistant_spans(
    template: str, template_name: str, messages: list[dict[str, Any]], variables: Mapping[str, str]
) -> tuple[str, list[Span]]:
    """(rendered chat, character spans of the assistant turns in it): content and end-of-turn marker of each.

    With `{% generation %}` blocks the spans are theirs. Otherwise assistant message i spans from the end of
    `render(messages[:i], add_generation_prompt=True)` (the prompt that asks for it) to the end of
    `render(messages[:i+1])`, trailing whitespace dropped, when those renders are prefixes of the whole chat. A
    template that renders earlier turns differently (e.g. drops their reasoning) has the turn's end found as the
    end of its content plus the text the template puts after it; one that ignores `add_generation_prompt` has the
    turn start at its content. `TokenizerError` when no turn is an assistant's or no assistant text is found.
    """
    roles = [message["role"] for message in messages]
    if "assistant" not in roles:
        raise TokenizerError(f"chat has no assistant turn (roles: {', '.join(roles)}); nothing to train on")
    generation: list[Span] = []
    text = render(template, template_name, messages, add_generation_prompt=False, variables=variables, spans=generation)
    if _GENERATION_TAG.search(template):
        spans = [span for span in generation if span[1] > span[0]]
    else:
        spans = _prefix_spans(template, template_name, messages, variables, text)
    if not spans:
        raise TokenizerError(
            f"chat template {template_name} renders no assistant text for this chat (roles: "
            f"{', '.join(roles)}); nothing to train on"
        )
    return text, spans


def _prefix_spans(
    template: str, template_name: str, messages: list[dict[str, Any]], variables: Mapping[str, str], text: str
) -> list[Span]:
    """The assistant spans of `text` (the whole chat) found by rendering prefixes (see `assistant_spans`)."""

    def prefix(count: int, add_generation_prompt: bool) -> str | None:
        try:
            return render(
                template,
                template_name,
                messages[:count],
                add_generation_prompt=add_generation_prompt,
                variables=variables,
            )
        except TokenizerError:  # e.g. a template that needs a user message first: fall back to the content
            return None

    spans = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, bare, through = prefix(index, True), prefix(index, False), prefix(index + 1, False)
        if prompt is not None and text.startswith(prompt) and len(prompt) >= cursor and prompt != bare:
            start = len(prompt)
        else:  # the whole chat differs, or the template ignores add_generation_prompt: start at the content
            after_bare = len(bare) if bare is not None and text.startswith(bare) else 0
            start = _content_start(text, message, max(cursor, after_bare))
        if prompt is not None and through is not None and through.startswith(prompt) and text.startswith(through):
            end = len(through)
        else:
            end = _turn_end(text, through or "", message, start)
        end = start + len(text[start:end].rstrip())
        if end > start:
            spans.append((start, end))
        cursor = max(cursor, end)
    return spans


def _content_text(message: Mapping[str, Any]) -> str:
    """The message's text: a string content, or the `text` of its content blocks joined."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(block.get("text", "") for block in content if isinstance(block, Mapping))
    return str(content)


def _content_start(text: str, message: Mapping[str, Any], cursor: int) -> int:
    content = _content_text(message).strip()
    found = text.find(content, cursor) if content else -1
    return found if found >= 0 else cursor


def _turn_end(text: str, through: str, message: Mapping[str, Any], start: int) -> int:
    """End of the assistant turn starting at `start` in `text`, when the template renders it differently in the
    whole chat: the end of its content there, extended by whatever `through` (the chat rendered up to this turn)
    puts right after that content (the end-of-turn marker) if the whole chat has it too."""
    content = _content_text(message).strip()
    found = text.find(content, start) if content else -1
    if found < 0:
        return start
    end = found + len(content)
    after = through.rfind(content)
    if after >= 0:
        marker = through[after + len(content) :].rstrip()
        if marker and text.startswith(marker, end):
            end += len(marker)
    return end


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

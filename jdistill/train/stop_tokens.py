"""The data tokenizer's EOS and padding ids for recipes that generate (GKD): `eos_id` / `pad_id` options left unset
are filled from `data.tokenizer`, so on-policy samples stop where the data's completions stop (each completion
ends in the tokenizer's EOS, docs/data.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jdistill.hf.tokenizer_facts import data_tokenizer


def _fields(recipe: Any) -> set[str]:
    return {field.name for field in dataclasses.fields(recipe)} if dataclasses.is_dataclass(recipe) else set()


def with_stop_tokens(recipe: Any, config: Any) -> Any:
    """The recipe with `eos_id` and `pad_id` set from the data tokenizer where it takes them and they are None.
    Unchanged for classifiers and for a tokenizer folder that does not exist here (`jdistill compile` off the
    training machine)."""
    wanted = [name for name in ("eos_id", "pad_id") if name in _fields(recipe) and getattr(recipe, name) is None]
    if not wanted or config.student.model.kind != "lm":
        return recipe
    spec = data_tokenizer(config.data)
    if spec != "bytes" and not Path(spec.removeprefix("hf:")).exists():
        return recipe
    from jdistill.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    ids = {"eos_id": int(tokenizer.eos_id), "pad_id": int(tokenizer.pad_id)}
    return dataclasses.replace(recipe, **{name: ids[name] for name in wanted})

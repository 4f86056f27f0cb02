"""YAML + `key.sub=value` overrides -> validated frozen dataclasses, with one-line errors.

Every error names the dotted key and what was expected, and suggests the closest valid key for a typo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from jdistill.errors import ConfigError

PRESET_DIR = Path(__file__).parent
ConfigT = TypeVar("ConfigT")  # a config dataclass


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass (leaves and sections)."""
    keys = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        keys.append(key)
        field_type = typing.get_type_hints(cls)[field.name]
        if isinstance(field_type, type) and dataclasses.is_dataclass(field_type):
            keys.extend(all_keys(field_type, key + "."))
    return keys


def _unknown_key(root_cls: type, key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(root_cls), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{hint}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return "a list"
    if tp is dict or origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a non-empty string"}.get(
        tp, str(tp)
    )


def _non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """(dotted key, value) of the first NaN or infinity in `value` (a number, or the lists and mappings of free-form
    fields such as `distill.options`), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for name, item in items:
        found = _non_finite(item, f"{key}.{name}" if isinstance(value, dict) else f"{key}[{name}]")
        if found:
            return found
    return None


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    where = f"{source}: " if source else ""
    error = ConfigError(f"{where}{key} expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise error
    if origin is Literal:  # by type too: `true` is not the option 1
        if any(value == option and type(value) is type(option) for option in typing.get_args(tp)):
            return value
        raise error
    if tp is type(None):
        if value is None:
            return None
        raise error
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise error
        (item_type, *_) = typing.get_args(tp) or (Any,)
        items = [value_i if item_type is Any else _coerce(value_i, item_type, key, source) for value_i in value]
        return tuple(items) if origin is tuple else items
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise error
        bad = _non_finite(value, key)
        if bad:
            raise ConfigError(f"{where}{bad[0]} expected a finite number, got {bad[1]!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise error
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise error
    if tp is float:  # NaN and infinities are never a valid setting (a NaN learning rate trains to NaN)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise error
    if tp is str:  # an empty string is never a name, path or spec; null is the way to unset an optional field
        if isinstance(value, str) and value.strip():
            return value
        raise error
    return value


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp` as a config field `key` is (e.g. a recipe's `distill.options`):
    a one-line ConfigError naming `key` when it does not fit."""
    return _coerce(value, tp, key, "")


def build(cls: type[ConfigT], values: Any, source: str, prefix: str = "", root_cls: type | None = None) -> ConfigT:
    """Build dataclass `cls` from a nested dict, checking keys, types and each section's `validate()`."""
    root_cls = root_cls or cls
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in hints:
            raise _unknown_key(root_cls, key, source)
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):  # `student.model: null` is not "the default model": say so
                raise ConfigError(
                    f"{source}: {key} expected a mapping of its fields (leave the key out for the defaults), "
                    f"got {value!r}"
                )
            kwargs[name] = build(hints[name], value, source, key + ".", root_cls)
        else:
            kwargs[name] = _coerce(value, hints[name], key, source)
    config = cls(**kwargs)
    if hasattr(config, "validate"):
        for field, expected in config.validate():
            got = _lookup(config, field)
            raise ConfigError(f"{source}: {prefix}{field} expected {expected}, got {got!r}")
    return config


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value) with the value typed by YAML (ints, floats, bools, lists, null)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string; accept plain-float spellings.
    if isinstance(value, str) and any(c in value for c in ".eE") and value.lower() != "e":
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip().split("."), value


def merge_override(tree: dict[str, Any], path: list[str], value: Any, root_cls: type) -> None:
    """Set `tree[path] = value`, rejecting keys the schema does not have (with a suggestion)."""
    cls: Any = root_cls
    node = tree
    for depth, part in enumerate(path):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(root_cls, ".".join(path), "override")
        if depth == len(path) - 1:
            node[part] = value
            return
        cls = hints[part]
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        if cls is dict or typing.get_origin(cls) is dict:  # a free-form mapping: the rest of the path is its keys
            for inner in path[depth + 1 : -1]:
                if not isinstance(child.get(inner), dict):
                    child[inner] = {}
                child = child[inner]
            child[path[-1]] = value
            return
        if not dataclasses.is_dataclass(cls):
            raise _unknown_key(root_cls, ".".join(path), "override")
        node = child


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return _unshared(data)


def _unshared(value: Any) -> Any:
    """A copy in which YAML anchors/aliases (`&model` ... `*model`) no longer share one object, so an override
    of `teacher.model.d_model` never changes the student that aliased the teacher's model."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (`lm_kd`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path}: no such file")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"--config {name_or_path}: unknown preset{hint}; presets: {', '.join(preset_names())}")
    return preset


def load_config(
    root_cls: type[ConfigT], name_or_path: str | None = "default", overrides: Iterable[str] = ()
) -> ConfigT:
    """Read a preset or file, apply overrides, and validate into `root_cls`."""
    path = resolve_config_path(name_or_path or "default")
    tree = read_yaml(path)
    build(root_cls, tree, str(path))  # errors in the file are reported against the file
    overrides = list(overrides)
    for text in overrides:
        key_path, value = parse_override(text)
        merge_override(tree, key_path, value, root_cls)
    return build(root_cls, tree, "override" if overrides else str(path))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)

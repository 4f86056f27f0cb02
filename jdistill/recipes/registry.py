"""Every recipe by name, discovered from the modules of this package (adding a recipe edits no shared file).

A recipe is a frozen dataclass subclassing `RecipeBase`, with a `name` default; its docstring's first line is
its one-line description in `jdistill recipes`. `build_recipe(distill_config)` fills the fields the recipe
shares with `DistillConfig` (objective, temperature, weights ...) and then `distill.options`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import pkgutil
import typing

import jdistill.recipes as package
from jdistill.configs.parsing import coerce_value
from jdistill.errors import ConfigError
from jdistill.recipes.base import RecipeBase

SHARED_FIELDS = ("objective", "temperature", "distill_weight", "label_weight", "beta", "scale_by_temperature_squared")


@functools.cache
def recipe_classes() -> dict[str, type]:
    """{name: class} over every module in `jdistill.recipes`."""
    found: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, RecipeBase)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                name = _default(value, "name")
                if name and name != "recipe":
                    found[name] = value
    return dict(sorted(found.items()))


def _default(cls, field_name):
    for field in dataclasses.fields(cls):
        if field.name == field_name:
            return field.default
    return getattr(cls, field_name, None)


def describe(cls) -> str:
    """The first line of the recipe's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def recipe_table() -> list[tuple[str, str, str]]:
    """(name, teacher policy, one-line description) for every recipe."""
    return [(name, _default(cls, "teacher_policy"), describe(cls)) for name, cls in recipe_classes().items()]


def build_recipe(distill_config, **extra):
    """The recipe `distill.recipe` with the shared fields and `distill.options`; unknown names and options are
    one-line config errors."""
    classes = recipe_classes()
    name = distill_config.recipe
    if name not in classes:
        close = difflib.get_close_matches(name, classes, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"distill.recipe: unknown recipe {name!r}{hint}; see `jdistill recipes`")
    cls = classes[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)  # options are typed like config fields (one line naming the option)
    kwargs = {
        key: getattr(distill_config, key)
        for key in SHARED_FIELDS
        if key in fields and getattr(distill_config, key) is not None
    }
    for key, value in dict(distill_config.options).items():
        if key not in fields or key in ("name", "teacher_policy"):
            options = sorted(fields - set(SHARED_FIELDS) - {"name", "teacher_policy"})
            raise ConfigError(
                f"distill.options.{key}: not a parameter of recipe {name!r} "
                f"(its options: {', '.join(options) or 'none'})"
            )
        kwargs[key] = coerce_value(value, hints[key], f"distill.options.{key}") if key in hints else value
    kwargs.update(extra)
    try:
        recipe = cls(**kwargs)
    except (TypeError, ValueError, ConfigError) as error:
        raise ConfigError(f"distill.options: recipe {name!r}: {error}") from None
    try:
        recipe.policy  # noqa: B018 -- the policy's name must be known
    except ValueError as error:
        raise ConfigError(f"recipe {name!r}: {error}") from None
    return recipe

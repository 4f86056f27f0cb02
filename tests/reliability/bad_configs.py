"""Strategies of bad configs for `test_bad_configs.py`: each draws `(cli_args, fragment)`, a `jdistill train`
invocation whose config is wrong and the text (the field, key or file) its one-line error must name.

The fields come from the schema itself (`jdistill.configs.Config`), so a field added later is covered by the
type-driven strategies without editing this file.
"""

from __future__ import annotations

import dataclasses
import string
import types
import typing

import jax
from hypothesis import strategies as st

from jdistill.configs import Config, preset_names
from jdistill.configs.parsing import all_keys
from jdistill.configs.schema import DATASET_NAMES
from jdistill.losses.divergences import DIVERGENCES
from jdistill.recipes.registry import SHARED_FIELDS, recipe_classes


def leaves(cls: type = Config, prefix: str = "") -> dict[str, typing.Any]:
    """{dotted key: annotation} of every leaf field; sections (dataclasses) are recursed into."""
    found: dict[str, typing.Any] = {}
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(annotation):
            found.update(leaves(annotation, f"{prefix}{field.name}."))
        else:
            found[prefix + field.name] = annotation
    return found


def sections(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted keys of every section (a dataclass field: `teacher`, `student.model`, ...)."""
    found = []
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(annotation):
            found += [prefix + field.name, *sections(annotation, f"{prefix}{field.name}.")]
    return found


def _options(annotation) -> tuple:
    """The alternatives of a union annotation (`float | None` -> (float, NoneType)); else (annotation,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


LEAVES = leaves()
ALL_KEYS = set(all_keys(Config))
FREE_FORM = [key for key, tp in LEAVES.items() if tp is dict]  # distill.options, mesh.rules, run.compare, ...
FLOAT_KEYS = sorted(key for key, tp in LEAVES.items() if float in _options(tp))
INT_KEYS = sorted(key for key, tp in LEAVES.items() if int in _options(tp) and float not in _options(tp))
BOOL_KEYS = sorted(key for key, tp in LEAVES.items() if bool in _options(tp))
STR_KEYS = sorted(key for key, tp in LEAVES.items() if str in _options(tp))
LITERAL_KEYS = sorted(key for key, tp in LEAVES.items() if typing.get_origin(tp) is typing.Literal)
LIST_KEYS = sorted(key for key, tp in LEAVES.items() if typing.get_origin(tp) in (list, tuple))
SECTIONS = sections()

# YAML spellings of NaN and the infinities (`1e999` overflows to inf when read as a float).
NON_FINITE = [".nan", ".NaN", ".NAN", ".inf", ".Inf", "+.inf", "-.inf", "-.Inf", "1e999", "-1e999"]
WRONG_TYPE_VALUES = {
    "int": ["abc", "2.5", "[1, 2]", "{a: 1}", "true", "1e3", "'7'"],
    "float": ["abc", "true", "[1.0]", "{a: 1}", "false", "'x1'"],
    "bool": ["maybe", "2", "0.5", "[true]", "{a: 1}", "abc", "'true'"],
    "str": ["[a]", "{a: 1}", "3", "2.5", "true", "''", "' '"],
    "literal": ["3", "[1]", "{a: 1}", "2.5", "''", "true"],
    "list": ["3", "abc", "{a: 1}", "true"],
    "dict": ["3", "abc", "[1]", "true", "2.5"],
}


def _scalar(annotation) -> str:
    options = [tp for tp in _options(annotation) if tp is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "literal"
    if annotation is dict:
        return "dict"
    if options[0] in (list, tuple) or typing.get_origin(options[0]) in (list, tuple):
        return "list"
    if float in options:
        return "float"
    return {bool: "bool", int: "int", str: "str"}.get(options[0], "str")


_WRONG_TYPE_CASES = [(key, value) for key, tp in LEAVES.items() for value in WRONG_TYPE_VALUES[_scalar(tp)]]


def _override(key: str, value: str) -> tuple[list[str], str]:
    return [f"{key}={value}"], key


@st.composite
def non_finite_values(draw):
    """NaN / inf in a float field (scalar fields; lists of floats such as rope_scaling) or a free-form mapping."""
    value = draw(st.sampled_from(NON_FINITE))
    kind = draw(st.sampled_from(["field", "field", "list", "free_form"]))
    if kind == "field":
        return _override(draw(st.sampled_from(FLOAT_KEYS)), value)
    if kind == "list":
        key = draw(st.sampled_from(["teacher.model.rope_scaling", "student.model.rope_scaling"]))
        return [f"{key}=[8.0, 1.0, {value}, 8192]"], key
    names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
    path = draw(st.lists(names, min_size=1, max_size=3))
    root = draw(st.sampled_from(FREE_FORM))
    key = ".".join([root, *path])
    return _override(key, value)


def _recipe_option_cases() -> list[tuple[str, str, str]]:
    """(recipe, option, wrong value) for every typed option of every recipe (`distill.options`)."""
    cases = []
    for name, cls in recipe_classes().items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.init or field.name in (*SHARED_FIELDS, "name", "teacher_policy"):
                continue
            kind = _scalar(hints[field.name])
            if kind in ("int", "float", "bool", "str"):
                cases += [(name, field.name, value) for value in WRONG_TYPE_VALUES[kind]]
    return cases


_RECIPE_OPTION_CASES = _recipe_option_cases()


@st.composite
def wrong_types(draw):
    """A value of the wrong type for a config field, or for a recipe's typed option."""
    if draw(st.integers(0, 3)) == 0:
        recipe, option, value = draw(st.sampled_from(_RECIPE_OPTION_CASES))
        return [f"distill.recipe={recipe}", f"distill.options.{option}={value}"], f"distill.options.{option}"
    key, value = draw(st.sampled_from(_WRONG_TYPE_CASES))
    return _override(key, value)


def _floats(low=None, high=None):
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


STAGE = st.sampled_from(["teacher", "student"])
# (key suffix or key, values that are out of its range)
_OUT_OF_RANGE = {
    "train.steps": st.integers(max_value=0),
    "train.batch_size": st.integers(max_value=0),
    "train.eval_every": st.integers(max_value=0),
    "train.log_every": st.integers(max_value=0),
    "train.checkpoint_every": st.integers(max_value=0),
    "train.keep_checkpoints": st.integers(max_value=0),
    "train.grad_accum_steps": st.integers(max_value=0),
    "train.learning_rate": _floats(high=0.0),
    "train.weight_decay": _floats(high=-1e-9),
    "train.b1": _floats(1.0) | _floats(high=-1e-9),
    "train.b2": _floats(1.0) | _floats(high=-1e-9),
    "train.final_lr_fraction": _floats(1.0 + 1e-9) | _floats(high=-1e-9),
    "train.grad_clip_norm": _floats(high=0.0),
    "train.warmup_steps": st.integers(min_value=1001) | st.integers(max_value=-1) | _floats(1.0 + 1e-9, 1e12),
    "model.num_layers": st.integers(max_value=0),
    "model.d_model": st.integers(max_value=0),
    "model.num_heads": st.integers(max_value=0),
    "model.mlp_dim": st.integers(max_value=0),
    "model.num_kv_heads": st.integers(max_value=0),
    "model.head_dim": st.integers(max_value=0),
    "model.num_classes": st.integers(max_value=0),
    "model.vocab_size": st.integers(max_value=0),
    "model.max_seq_len": st.integers(max_value=0),
    "model.rotary_fraction": _floats(1.0 + 1e-9) | _floats(high=-1e-9),
    "model.norm_eps": _floats(high=0.0),
    "model.sliding_window": st.integers(max_value=0),
}
_OUT_OF_RANGE_GLOBAL = {
    "seed": st.integers(max_value=-1),
    "data.seq_len": st.integers(max_value=0),
    "data.eval_batch_size": st.integers(max_value=0),
    "data.eval_max_batches": st.integers(max_value=0),
    "data.max_prompt_len": st.integers(min_value=128) | st.integers(max_value=0),
    "distill.temperature": _floats(high=0.0),
    "distill.distill_weight": _floats(high=-1e-9),
    "distill.label_weight": _floats(high=-1e-9),
    "distill.beta": _floats(1.0 + 1e-9) | _floats(high=-1e-9),
    "run.sample_tokens": st.integers(max_value=-1),
    "mesh.fsdp": st.integers(max_value=0),
    "mesh.tensor": st.integers(max_value=0),
    "mesh.expert": st.integers(max_value=0),
    "mesh.dcn_data": st.integers(max_value=0),
    "mesh.data": st.integers(max_value=-2) | st.just(0),
    "cluster.num_slices": st.integers(max_value=0),
    "cluster.num_processes": st.integers(max_value=0),
    "student.prune.calibration_batches": st.integers(max_value=0),
}


@st.composite
def out_of_range(draw):
    """A number outside its field's range; the steps are pinned to 1000 so a warm-up past them is out of range."""
    if draw(st.booleans()):
        suffix = draw(st.sampled_from(sorted(_OUT_OF_RANGE)))
        key = f"{draw(STAGE)}.{suffix}"
        value = draw(_OUT_OF_RANGE[suffix])
    else:
        key = draw(st.sampled_from(sorted(_OUT_OF_RANGE_GLOBAL)))
        value = draw(_OUT_OF_RANGE_GLOBAL[key])
    stage = key.split(".")[0]
    pinned = [f"{stage}.train.steps=1000"] if key.endswith("warmup_steps") else []
    return [*pinned, f"{key}={value!r}"], key


def _mutations(word: str, alphabet: str = string.ascii_lowercase + "_"):
    """A typo of `word`: one character deleted, inserted, replaced or two swapped."""
    positions = st.integers(0, max(len(word) - 1, 0))
    letters = st.sampled_from(alphabet)
    return st.one_of(
        positions.map(lambda i: word[:i] + word[i + 1 :]),
        st.tuples(positions, letters).map(lambda c: word[: c[0]] + c[1] + word[c[0] :]),
        st.tuples(positions, letters).map(lambda c: word[: c[0]] + c[1] + word[c[0] + 1 :]),
        positions.map(lambda i: word[:i] + word[i + 1 : i + 2] + word[i : i + 1] + word[i + 2 :]),
    )


def _typo_of(words, valid):
    """A typo of one of `words` that is none of `valid`."""
    return st.sampled_from(sorted(words)).flatmap(_mutations).filter(lambda w: w and w not in valid)


@st.composite
def unknown_keys(draw):
    """A misspelled key (as an override); never a key of the schema or a path inside a free-form mapping."""
    key = draw(
        _typo_of(ALL_KEYS, ALL_KEYS).filter(
            lambda k: not any(k.startswith(root + ".") for root in FREE_FORM) and not k.endswith(".")
        )
    )
    return [f"{key}=1"], key


@st.composite
def misspelled_names(draw):
    """A typo of a recipe, objective, dataset, preset or option of a Literal field."""
    kind = draw(st.sampled_from(["recipe", "objective", "dataset", "preset", "literal"]))
    if kind == "recipe":
        recipes = set(recipe_classes())
        return _override("distill.recipe", draw(_typo_of(recipes, recipes)))
    if kind == "objective":
        return _override("distill.objective", draw(_typo_of(DIVERGENCES, set(DIVERGENCES))))
    if kind == "dataset":
        return _override("data.name", draw(_typo_of(DATASET_NAMES, set(DATASET_NAMES))))
    if kind == "preset":
        presets = set(preset_names())
        return ["--config", draw(_typo_of(presets, presets))], "--config"
    key = draw(st.sampled_from(LITERAL_KEYS))
    options = [str(option) for option in typing.get_args(LEAVES[key])]
    words = [option for option in options if option.isalpha()] or ["none"]
    typo = draw(_typo_of(words, set(options) | {"null", "true", "false", "yes", "no", "on", "off", "y", "n"}))
    return _override(key, typo)


@st.composite
def bad_meshes(draw):
    """A mesh larger than this machine's devices, or rules naming an unknown logical or mesh axis."""
    devices = jax.device_count()
    kind = draw(st.sampled_from(["fsdp", "tensor", "expert", "data", "dcn_data", "rules_logical", "rules_mesh"]))
    if kind in ("fsdp", "tensor", "expert", "data", "dcn_data"):
        return [f"mesh.{kind}={draw(st.integers(devices + 1, devices + 4096))}"], "mesh"
    name = draw(st.text(alphabet=string.ascii_lowercase, min_size=3, max_size=10))
    if kind == "rules_logical":
        return [f"mesh.rules.{name}x=tensor"], f"mesh.rules.{name}x"
    return [f"mesh.rules.mlp={name}x"], "mesh.rules.mlp"


YAML_BREAKERS = [
    "{section}:\n  {field}: [unclosed\n",
    "{section}: {{{field}: 1\n",
    "{section}:\n\t{field}: 1\n",
    "{section}:\n  {field}: 'open\n",
    "{section}:\n  {field}: 1\n {field}: 2\n",
    "{section}: [a, b\n",
    "- {section}\n- {field}\n",
    "{section}\n",
    "'{section}: 1\n",
    "{section}: 1\n{field}:: : 2\n",
    "{section}: !!python/object:os.system 1\n",
    "{section}: &a\n  {field}: *b\n",
]


@st.composite
def broken_yaml_files(draw):
    """The text (or bytes) of a config file that is not valid YAML, not a mapping, or not UTF-8."""
    kind = draw(st.sampled_from(["template", "template", "template", "bytes", "unknown_nested"]))
    if kind == "bytes":
        return b"\xff" + draw(st.binary(max_size=32))
    section = draw(st.sampled_from(SECTIONS))
    field = draw(st.sampled_from(sorted(key.rsplit(".", 1)[-1] for key in ALL_KEYS)))
    if kind == "unknown_nested":
        typo = draw(_typo_of([field], ALL_KEYS | {key.rsplit(".", 1)[-1] for key in ALL_KEYS}))
        return f"{section.replace('.', ':{')}: {{{typo}: 1{'}' * section.count('.')}}}\n".replace(":{", ": {")
    return draw(st.sampled_from(YAML_BREAKERS)).format(section=section, field=field)


@st.composite
def empty_or_null(draw):
    """An empty string in a string field, or a whole section set to null / '' / a scalar."""
    if draw(st.booleans()):
        key = draw(st.sampled_from(STR_KEYS))
        return _override(key, draw(st.sampled_from(["", "''", "' '", '"\t"'])))
    key = draw(st.sampled_from(SECTIONS))
    return _override(key, draw(st.sampled_from(["null", "", "~", "3", "abc", "[1]"])))


MALFORMED = [
    (["=1"], "=1"),
    (["seed"], "seed"),
    (["seed.deeper=1"], "seed.deeper"),
    ([".seed=1"], ".seed"),
    (["teacher.train=3"], "teacher.train"),
    (["teacher..train.steps=3"], "teacher..train.steps"),
    (["teacher.train.steps.x=3"], "teacher.train.steps.x"),
    (["seed=1=2"], "seed"),
    (["seed=[1"], "seed"),
    (["distill=recipe"], "distill"),
]

"""Config loading: presets, files, typed overrides, and one-line errors naming the key."""

import dataclasses

import pytest

from jdistill.configs import Config, load_config, preset_names
from jdistill.configs.parsing import all_keys, parse_override
from jdistill.errors import ConfigError


def test_every_preset_loads_and_validates():
    assert {"default", "lm_kd"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), Config)


def test_default_preset_is_a_digits_classifier_job():
    config = load_config()
    assert config.data.name == "digits"
    assert config.teacher.model.kind == config.student.model.kind == "classifier"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seed=3", 3),
        ("distill.temperature=4", 4),
        ("teacher.train.learning_rate=3e-4", 3e-4),
        ("run.progress=false", False),
        ("data.dir=null", None),
        ("a.b=[1, 2]", [1, 2]),
        ("x=gelu", "gelu"),
        ("x=1.5", 1.5),
    ],
)
def test_override_values_are_typed(text, expected):
    _, value = parse_override(text)
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_and_coerce_ints_to_floats():
    config = load_config("default", ["distill.temperature=3", "student.model.gate=elementwise", "seed=7"])
    assert config.distill.temperature == 3.0 and isinstance(config.distill.temperature, float)
    assert config.student.model.gate == "elementwise"
    assert config.seed == 7


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config().seed = 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.temprature=3", "unknown key 'distill.temprature' (did you mean distill.temperature?)"),
        ("train.steps=3", "did you mean teacher.train.steps?"),
        ("teacher.train.steps=abc", "teacher.train.steps expected an integer, got 'abc'"),
        ("teacher.train.steps=2.5", "teacher.train.steps expected an integer"),
        ("teacher.train.steps=0", "teacher.train.steps expected a positive integer, got 0"),
        ("distill.temperature=-1", "distill.temperature expected a positive number"),
        ("distill.beta=1.5", "distill.beta expected a number in [0, 1]"),
        ("student.model.gate=sometimes", "student.model.gate expected one of 'none', 'headwise', 'elementwise'"),
        ("run.progress=maybe", "run.progress expected true or false"),
        ("student.model.num_heads=5", "student.model.num_heads expected a divisor of d_model"),
        ("student.model.num_classes=7", "student.model.num_classes expected equal to teacher.model.num_classes"),
        ("seed", "expected key.sub=value"),
        ("seed.deeper=1", "unknown key 'seed.deeper'"),
    ],
)
def test_bad_overrides_give_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("default", [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"unknown preset.*presets: .*default"):
        load_config("defualt")


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("teacher:\n  train:\n    stpes: 10\n")
    with pytest.raises(
        ConfigError,
        match=r"mine.yaml: unknown key 'teacher.train.stpes' \(did you mean "
        r"teacher.train.steps\?\)",
    ):
        load_config(str(path))
    path.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: not valid YAML at line"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_partial_yaml_file_fills_defaults(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("seed: 5\ndistill:\n  temperature: 8\n")
    config = load_config(str(path))
    assert config.seed == 5 and config.distill.temperature == 8.0
    assert config.teacher == Config().teacher


def test_all_keys_lists_nested_leaves():
    keys = all_keys(Config)
    assert "teacher.model.gate" in keys and "distill.temperature" in keys and "data.name" in keys


def test_yaml_aliases_do_not_couple_overrides(tmp_path):
    from jdistill.configs import load_config

    path = tmp_path / "aliased.yaml"
    path.write_text("teacher:\n  model: &model {d_model: 32, num_heads: 2}\nstudent:\n  model: *model\n")
    config = load_config(str(path), ["teacher.model.d_model=64"])
    assert config.teacher.model.d_model == 64 and config.student.model.d_model == 32

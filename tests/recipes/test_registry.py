"""Recipes are discovered by name, built from the config, and listed by `jdistill recipes`."""

import subprocess
import sys

import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.recipes.base import TEACHER_POLICIES
from jdistill.recipes.registry import build_recipe, recipe_classes, recipe_table


def test_every_recipe_has_a_name_policy_and_one_line_description():
    rows = recipe_table()
    assert {"kd", "supervised"} <= {name for name, _, _ in rows}
    for name, policy, description in rows:
        assert policy in TEACHER_POLICIES, name
        assert description and "\n" not in description and not description.startswith(name + "("), name


def test_shared_fields_and_options_reach_the_recipe():
    config = load_config("default", ["distill.temperature=7", "distill.options.vocab_chunk=32"])
    recipe = build_recipe(config.distill)
    assert recipe.temperature == 7.0 and recipe.vocab_chunk == 32


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["distill.recipe=kdd"], "unknown recipe 'kdd' (did you mean kd?)"),
        (["distill.options.alpha_T=0.8"], "distill.options.alpha_T: not a parameter of recipe 'kd'"),
        (["distill.options.objective=bogus"], "recipe 'kd'"),
    ],
)
def test_bad_recipe_config_is_a_one_line_error(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        build_recipe(load_config("default", overrides).distill)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_preset_names_a_known_recipe():
    from jdistill.configs import preset_names

    for preset in preset_names():
        assert load_config(preset).distill.recipe in recipe_classes(), preset


def test_cli_lists_the_recipes():
    result = subprocess.run(
        [sys.executable, "-m", "jdistill.cli", "recipes"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(recipe_classes())


def test_bind_fills_unset_run_facts_only():
    import dataclasses

    from jdistill.recipes.base import RecipeBase, RunFacts

    @dataclasses.dataclass(frozen=True)
    class Scheduled(RecipeBase):
        total_steps: int | None = None
        num_epochs: float | None = 3.0
        num_examples: int | None = None

    facts = RunFacts(total_steps=200, steps_per_epoch=20.0, num_examples=1437, batch_size=64)
    bound = Scheduled().bind(facts)
    assert (bound.total_steps, bound.num_epochs, bound.num_examples) == (200, 3.0, 1437)
    assert Scheduled(num_epochs=None).bind(facts).num_epochs == 10.0

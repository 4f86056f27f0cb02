"""The README's catalogue lists every public objective, and its commands are the ones CI runs."""

import re
from pathlib import Path

import jdistill.losses

ROOT = Path(__file__).parents[1]


def test_catalogue_lists_every_public_objective():
    readme = (ROOT / "README.md").read_text()
    missing = [
        name
        for name in jdistill.losses.__all__
        if callable(getattr(jdistill.losses, name)) and f"`{name}`" not in readme
    ]
    assert not missing, f"README catalogue misses {missing}"


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python3 -m pytest -q' in readme
    assert "python3 -m pytest -q" in ci and re.search(r'-e "\.\[test[,\]]', ci)


def test_readme_lists_every_recipe():
    from jdistill.recipes.registry import recipe_classes

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in recipe_classes() if name != "supervised" and f"`{name}`" not in readme]
    assert not missing, f"README recipe table misses {missing}"


def _recipe_table_presets() -> dict[str, str]:
    """{preset: recipe} from the README's recipe table (the last column lists each recipe's presets)."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|\n]+ \| .+ \| (`[^|\n]+`) \|$", readme, flags=re.MULTILINE)
    return {preset: recipe for recipe, cell in rows for preset in re.findall(r"`(\w+)`", cell)}


def test_readme_lists_every_preset_under_its_recipe():
    from jdistill.configs import load_config, preset_names

    listed = _recipe_table_presets()
    assert sorted(listed) == sorted(preset_names()), "README recipe table: the preset column must list every preset"
    wrong = {p: r for p, r in listed.items() if load_config(p).distill.recipe != r}
    assert not wrong, f"README lists these presets under the wrong recipe: {wrong}"

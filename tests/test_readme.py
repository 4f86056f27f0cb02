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

"""The repository documents itself: every pointer from the package into the docs resolves inside this repository.

- No file under `jdistill/` names `conventions.md` / `methods.md` without the `docs/` prefix, or a path outside the
  repository (the specification folder that sits beside a checkout).
- Every `docs/NAME.md` it names exists, and every `docs/NAME.md#anchor` is a heading of that file (anchors as
  GitHub writes them: lowercase, punctuation dropped, spaces to hyphens).
- docs/methods.md covers every recipe and every public objective.
"""

import re
from pathlib import Path

import jdistill.losses

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "jdistill"
DOCS = ROOT / "docs"

BARE_DOC = re.compile(r"(?<![\w/])(conventions|methods)\.md")
# The specification folder beside the checkout, however it is written (relative, absolute, or by its subfolder).
SPEC_FOLDER, SPEC_SUBFOLDER = "shared", "SPEC"
OUTSIDE_PATH = re.compile(
    rf"\.\./{SPEC_FOLDER}|\b{SPEC_FOLDER}/{SPEC_SUBFOLDER}|\b{SPEC_SUBFOLDER}/|/work/{SPEC_FOLDER}"
)
DOC_LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def package_lines():
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".txt", ".toml"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                yield f"{path.relative_to(ROOT)}:{number}", line


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {
        slug(line.lstrip("#")) for line in doc.read_text(encoding="utf-8").splitlines() if re.match(r"#{1,6} ", line)
    }


def test_slug_follows_github():
    assert slug(" Hinton KD") == "hinton-kd" and slug("SLA and self-distillation") == "sla-and-self-distillation"
    assert slug("PS-KD") == "ps-kd" and slug("Randomness and determinism") == "randomness-and-determinism"


def test_docs_are_named_with_their_docs_prefix():
    bare = [
        f"{where}: {line.strip()}"
        for where, line in package_lines()
        if BARE_DOC.search(line.replace("docs/conventions.md", "").replace("docs/methods.md", ""))
    ]
    assert not bare, "point to docs/conventions.md or docs/methods.md:\n" + "\n".join(bare)


def test_nothing_points_outside_the_repository():
    outside = [f"{where}: {line.strip()}" for where, line in package_lines() if OUTSIDE_PATH.search(line)]
    assert not outside, "the package must not point outside the repository:\n" + "\n".join(outside)


def test_every_docs_link_and_anchor_exists():
    broken = []
    for where, line in package_lines():
        for name, anchor in DOC_LINK.findall(line):
            doc = DOCS / name
            if not doc.is_file():
                broken.append(f"{where}: docs/{name} does not exist")
            elif anchor and anchor not in anchors(doc):
                broken.append(f"{where}: docs/{name} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_docs_link_to_each_other_by_existing_anchors():
    broken = []
    for doc in DOCS.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([\w-]+\.md)#([\w-]+)\)", doc.read_text(encoding="utf-8")):
            if not (DOCS / target).is_file() or anchor not in anchors(DOCS / target):
                broken.append(f"{doc.name}: {target}#{anchor}")
    assert not broken, "\n".join(broken)


def test_methods_cover_every_recipe_and_public_objective():
    from jdistill.recipes.registry import recipe_classes

    methods = (DOCS / "methods.md").read_text(encoding="utf-8")
    missing_recipes = [name for name in recipe_classes() if f"recipe `{name}`" not in methods.lower()]
    missing_functions = [
        name
        for name in jdistill.losses.__all__
        if callable(getattr(jdistill.losses, name)) and f"`losses.{name}`" not in methods and f"`{name}`" not in methods
    ]
    assert not missing_recipes and not missing_functions, (missing_recipes, missing_functions)

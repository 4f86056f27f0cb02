"""Layering, read from the source with `ast` (no imports run): nothing below `jdistill.recipes` imports from it,
recipes import only public names of other modules, and loss modules share private helpers only through
`jdistill.losses._common`."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "jdistill"
# The layers a recipe is built from; they must not depend on recipes (the train step included: recipes plug into it).
BELOW_RECIPES = ("losses", "nn", "kernels", "models", "data", "eval")


def _module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE.parent):
    """(imported module, imported name or None) for every import statement in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            for alias in node.names:
                yield module, alias.name


def _modules(*subpackages):
    return sorted(p for sub in subpackages for p in (PACKAGE / sub).rglob("*.py"))


def _is_recipes(module: str, name: str | None) -> bool:
    return (
        module == "jdistill.recipes"
        or module.startswith("jdistill.recipes.")
        or (module == "jdistill" and name == "recipes")
    )


def _private(module: str, name: str | None) -> bool:
    """Whether the import reaches a private name: `from a import _x` or a module path with a `_part`."""
    parts = module.split(".") + ([name] if name else [])
    return any(part.startswith("_") and not part.startswith("__") for part in parts)


def _violations(paths, is_bad):
    return {_module_name(path): bad for path in paths if (bad := [(m, n) for m, n in imports(path) if is_bad(m, n)])}


def test_nothing_below_recipes_imports_them():
    paths = _modules(*BELOW_RECIPES) + [PACKAGE / "train" / "step.py"]
    assert len(paths) > 40
    assert not _violations(paths, _is_recipes)


def test_recipes_import_only_public_names():
    paths = _modules("recipes")
    assert len(paths) > 20
    assert not _violations(paths, lambda m, n: m.startswith("jdistill") and _private(m, n))


def test_loss_modules_share_private_helpers_only_through_common():
    def bad(module, name):
        through_common = module == "jdistill.losses._common" or (module == "jdistill.losses" and name == "_common")
        return module.startswith("jdistill") and _private(module, name) and not through_common

    paths = _modules("losses")
    assert len(paths) > 10
    assert not _violations(paths, bad)


# The diffusion substrate (docs/diffusion.md): recipes and training build on it, so it imports neither
# (`jdistill.diffusion.load`, which reads run directories, is the one module of the package above them).
DIFFUSION_SUBSTRATE = ("schedules", "embeddings", "denoisers", "samplers", "objectives")


def test_the_diffusion_substrate_sits_below_recipes_and_training():
    paths = [PACKAGE / "diffusion" / f"{name}.py" for name in DIFFUSION_SUBSTRATE]
    assert all(path.is_file() for path in paths)

    def above(module, name):
        return _is_recipes(module, name) or module.startswith("jdistill.train") or module == "jdistill.diffusion.load"

    assert not _violations(paths, above)


def test_kernel_ridge_lives_with_the_losses():
    recipe_functions = {
        node.name
        for path in _modules("recipes")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    assert not {name for name in recipe_functions if name.startswith("krr") or "ridge" in name}
    from jdistill.losses import kernel_ridge

    assert callable(kernel_ridge.krr_query_operator) and callable(kernel_ridge.probe_alpha)


def test_the_checks_see_what_they_are_meant_to(tmp_path):
    """The walker resolves `from jdistill import recipes`, relative imports and private module paths."""
    module = tmp_path / "jdistill" / "eval" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from jdistill import recipes\nfrom ..recipes.base import RecipeBase\n"
        "from jdistill.losses._common import kl\nfrom jdistill.losses.logits import _x\n"
    )
    found = list(imports(module, root=tmp_path))
    assert [m for m, _ in found] == [
        "jdistill",
        "jdistill.recipes.base",
        "jdistill.losses._common",
        "jdistill.losses.logits",
    ]
    assert [_is_recipes(m, n) for m, n in found] == [True, True, False, False]
    assert [_private(m, n) for m, n in found] == [False, False, True, True]

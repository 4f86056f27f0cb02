"""Every notebook's code uses only jdistill API that exists, called the way it is declared: the default suite's fast
guard for notebooks that run end to end only with `-m slow` (test_repro_notebooks.py, test_01_quickstart.py).

For each code cell: it parses; each `from jdistill... import name` names a module that imports and an attribute it
has; each call of a name so imported (or of an attribute of an imported jdistill module) binds to the callee's
signature (positional count, keyword names); each preset a cell loads by name (`load_config("llm_kd", ...)`) exists.
A renamed or removed function, module, keyword or preset fails here in seconds, naming the notebook and cell."""

import ast
import contextlib
import importlib
import inspect
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


def code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def _import_submodule(module: str, name: str) -> None:
    with contextlib.suppress(ModuleNotFoundError):  # not a submodule either: the caller's check names what is missing
        importlib.import_module(f"{module}.{name}")


def jdistill_names(tree: ast.AST) -> dict[str, object]:
    """{local name: object} of every jdistill import in `tree` (modules and the names imported from them)."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jdistill":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):  # a submodule imported by name
                    _import_submodule(node.module, alias.name)
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jdistill":
                    module = importlib.import_module(alias.name)
                    names[alias.asname or alias.name.split(".")[0]] = (
                        module if alias.asname else importlib.import_module("jdistill")
                    )
    return names


def callee(func: ast.expr, names: dict[str, object]):
    """The jdistill object a call's function expression names (a name or a dotted attribute of one), or None."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in names:
        return None
    target = names[func.id]
    for part in reversed(parts):
        if inspect.ismodule(target) and not hasattr(target, part):
            _import_submodule(target.__name__, part)
        assert hasattr(target, part), f"{getattr(target, '__name__', target)} has no {part}"
        target = getattr(target, part)
    return target


def check_call(call: ast.Call, target) -> None:
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(kw.arg is None for kw in call.keywords):
        return  # *args / **kwargs: not checkable statically
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins and C functions
        return
    signature.bind(*[None] * len(call.args), **{kw.arg: None for kw in call.keywords if kw.arg})


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_use_existing_api_as_declared(notebook):
    from jdistill.configs import load_config

    cells = code_cells(notebook)
    names: dict[str, object] = {}
    for index, source in enumerate(cells):
        where = f"{notebook.name} code cell {index}"
        tree = ast.parse(source, filename=where)
        try:
            names.update(jdistill_names(tree))  # names imported in earlier cells stay in scope, as in the kernel
            for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
                target = callee(call.func, names)
                if target is None:
                    continue
                check_call(call, target)
                if target is load_config and call.args and isinstance(call.args[0], ast.Constant):
                    load_config(call.args[0].value)  # the preset exists and parses
        except Exception as error:
            raise AssertionError(f"{where}: {type(error).__name__}: {error}") from error


def test_the_checker_sees_a_missing_name_and_a_wrong_keyword():
    """The guard itself: a cell importing a name that is gone, or calling with a keyword that is not declared."""
    with pytest.raises(AssertionError, match="has no no_such_loader"):
        jdistill_names(ast.parse("from jdistill.configs import no_such_loader"))
    tree = ast.parse("from jdistill.eval.report import read_curves\nread_curves('m.jsonl', splits='eval')")
    names = jdistill_names(tree)
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call))
    with pytest.raises(TypeError):
        check_call(call, callee(call.func, names))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_tiny_size_overrides_are_config_keys(notebook, monkeypatch, tmp_path):
    """The size cell (the one that reads JDISTILL_NOTEBOOK_TINY) runs, and every `load_config(PRESET, ARGS)` whose
    ARGS it can evaluate loads: an override naming a config key that is gone fails here, not minutes into a slow run."""
    from jdistill.configs import load_config

    monkeypatch.setenv("JDISTILL_NOTEBOOK_TINY", "1")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cells = code_cells(notebook)
    size = [source for source in cells if "JDISTILL_NOTEBOOK_TINY" in source and "import jdistill" not in source]
    namespace: dict = {}
    for source in size:
        exec(compile(source, f"{notebook.name} size cell", "exec"), namespace)
    for call in (node for source in cells for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)):
        if getattr(call.func, "id", None) != "load_config" or not call.args:
            continue
        try:
            args = [eval(compile(ast.Expression(arg), "args", "eval"), dict(namespace)) for arg in call.args]
        except NameError:
            continue  # built from names of later cells (a loop variable, a path): the slow run checks those
        load_config(*args)

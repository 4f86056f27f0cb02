"""`pystdlib_functions`: prompt/completion pairs cut from the embedded standard-library corpus with `ast`.

For every function (`def` / `async def`, at any depth) that has a docstring and a body after it:
    prompt     = the source lines from the `def` (decorators excluded) through the end of the docstring, plus "\\n"
    completion = the remaining body lines (up to the function's end), dedented by nothing (kept as written)
Functions whose body is only the docstring, or whose prompt + completion exceed MAX_FUNCTION_CHARS, are skipped. A
file that `ast` cannot parse (none in a supported CPython) is skipped. The split is the parent's (by file).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

MAX_FUNCTION_CHARS = 4000


def functions_of(source: str) -> Iterator[tuple[str, str, int]]:
    """(prompt, completion, line) of each documented function of a Python source, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines(keepends=True)
    nodes = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    for node in sorted(nodes, key=lambda node: node.lineno):
        if ast.get_docstring(node) is None or len(node.body) < 2 or node.end_lineno is None:
            continue
        docstring_end = node.body[0].end_lineno
        if docstring_end is None or node.body[1].lineno <= docstring_end:
            continue  # a statement on the docstring's line: no clean cut
        prompt = "".join(lines[node.lineno - 1 : docstring_end])
        completion = "".join(lines[docstring_end : node.end_lineno])
        if completion.strip() and len(prompt) + len(completion) <= MAX_FUNCTION_CHARS:
            yield prompt, completion, node.lineno


def function_documents(files: Iterable[dict]) -> Iterator[dict]:
    """Prompt/completion documents from text documents (`{"text", "where"}`) of Python sources."""
    for document in files:
        for prompt, completion, line in functions_of(document["text"]):
            yield {"prompt": prompt, "completion": completion, "where": f"{document['where']}:{line}"}

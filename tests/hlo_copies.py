"""Copy instructions a compiled XLA program executes inside its loops (tests of decoding loops that must not
copy their caches)."""

import math
import re

_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_CALLED = re.compile(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_COPY = re.compile(r"= \w+\[([\d,]*)\]\S* copy\(")


def loop_copy_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the `copy` instructions in every while-loop body of a compiled HLO module, counting those inside
    the fusions and nested loops a body calls (a copy inside a fusion is a transpose or layout change that still
    reads and writes the whole array each iteration)."""
    computations: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif name is not None and line.startswith("  "):
            computations[name].append(line)

    def called(line: str) -> list[str]:
        names = _CALLED.findall(line)
        for branches in _BRANCHES.findall(line):
            names += re.findall(r"%([\w.\-]+)", branches)
        return names

    bodies = [
        body for lines in computations.values() for line in lines for body in re.findall(r"body=%([\w.\-]+)", line)
    ]
    seen: set[str] = set()
    stack = list(bodies)
    shapes = []
    while stack:
        computation = stack.pop()
        if computation in seen or computation not in computations:
            continue
        seen.add(computation)
        for line in computations[computation]:
            copy = _COPY.search(line)
            if copy:
                shapes.append(tuple(int(size) for size in copy.group(1).split(",") if size))
            stack += called(line)
    return shapes


def cache_sized(shapes, cache_shape) -> list[tuple[int, ...]]:
    """The shapes among `shapes` with at least as many elements as one cache array."""
    return [shape for shape in shapes if math.prod(shape) >= math.prod(cache_shape)]

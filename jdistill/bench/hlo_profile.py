"""Per-op timing of compiled XLA programs from a `jax.profiler` trace (used by `jdistill bench train-step
--profile`).

The XLA CPU runtime records one trace event per executed thunk (a fusion, a dot, a copy...) named after its HLO
instruction, on the client's worker threads. `op_table` takes, per name, the time covered by its events (an op
that several worker threads execute together counts once) over the traced steps, divided by the step count;
the share column is each op's part of the summed op time (independent thunks may still run concurrently, so the
sum can exceed the step's wall time: read shares, not the sum). Each row also carries the op's kind (`fusion`,
`dot`, `copy`, ...; for fusions, the HLO opcodes inside) and its source (the innermost jdistill file:line of the
stack that emitted it, from the module's stack-frame tables), so one can see where elementwise transcendental
ops and transposes come from. Timings under load include time the op's threads were preempted.
"""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Any

_SKIP = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "end: ", "Await", "PjRt", "Execute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")


def hlo_op_summary(hlo_text: str) -> dict[str, str]:
    """{instruction name: "opcode" or "fusion: op1,op2,..."} for the instructions of a compiled HLO module."""
    bodies: dict[str, list[str]] = collections.defaultdict(list)
    calls: dict[str, str] = {}
    kinds: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        kinds[name] = opcode
        if current is not None:
            bodies[current].append(opcode)
        called = _CALLS.search(line)
        if called:
            calls[name] = called.group(1)
    summary = {}
    for name, opcode in kinds.items():
        if opcode == "fusion" and name in calls:
            inner = sorted({op for op in bodies.get(calls[name], []) if op not in ("parameter", "constant")})
            summary[name] = "fusion: " + ",".join(inner)
        else:
            summary[name] = opcode
    return summary


def hlo_op_sources(hlo_text: str, package: str = "jdistill/") -> dict[str, str]:
    """{instruction name: "file.py:line"}: the innermost frame inside `package` (outside its `bench/`) of the
    Python stack that emitted the instruction, from the module's stack-frame tables."""
    tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
    section = None
    sources = {}
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        row = _TABLE_ROW.match(line) if section else None
        if row and section:
            tables[section][int(row.group(1))] = row.group(2)
            continue
        section = None
        match = _INSTRUCTION.match(line)
        frame = _FRAME_ID.search(line)
        if match and frame:
            sources[match.group(1)] = int(frame.group(1))

    def where(frame_id: int) -> str:
        seen = set()
        while frame_id and frame_id not in seen and frame_id in tables["StackFrames"]:
            seen.add(frame_id)
            fields = dict((k, int(v)) for k, v in _FIELD.findall(tables["StackFrames"][frame_id]))
            location = dict(
                (k, int(v))
                for k, v in _FIELD.findall(tables["FileLocations"].get(fields.get("file_location_id", 0), ""))
            )
            path = tables["FileNames"].get(location.get("file_name_id", 0), "").strip('"')
            if package in path and f"{package}bench/" not in path:
                return f"{path.split(package, 1)[1]}:{location.get('line', '?')}"
            frame_id = fields.get("parent_frame_id", 0) - 1
        return "?"

    return {name: where(frame_id) for name, frame_id in sources.items()}


def trace_op_times(trace_dir: str) -> dict[str, float]:
    """{event name: total nanoseconds} of the XLA runtime's op events in the newest trace under `trace_dir`."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        return {}
    intervals: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for plane in ProfileData.from_file(files[-1]).planes:
        for line in plane.lines:
            if line.name == "python" or not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.duration_ns and not any(part in event.name for part in _SKIP):
                    intervals[event.name].append((event.start_ns, event.start_ns + event.duration_ns))
    return {name: _covered(spans) for name, spans in intervals.items()}


def _covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals: an op that several worker threads run together counts once."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def op_table(trace_dir: str, hlo_text: str, steps: int, top: int = 40) -> list[dict[str, Any]]:
    """Rows {op, kind, source, ms_per_step, share} sorted by time, the `top` largest."""
    times = trace_op_times(trace_dir)
    summary = hlo_op_summary(hlo_text)
    sources = hlo_op_sources(hlo_text)
    total = sum(times.values()) or 1.0
    rows: list[dict[str, Any]] = [
        dict(
            op=name,
            kind=summary.get(name, "?"),
            source=sources.get(name, "?"),
            ms_per_step=ns / steps / 1e6,
            share=ns / total,
        )
        for name, ns in times.items()
    ]
    rows.sort(key=lambda row: -row["ms_per_step"])
    return rows[:top]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'op':<32} {'ms/step':>9} {'share':>6}  {'source':<28} kind"]
    lines += [
        f"{row['op'][:32]:<32} {row['ms_per_step']:>9.3f} {row['share']:>6.1%}  {row['source'][:28]:<28} "
        f"{row['kind'][:80]}"
        for row in rows
    ]
    return "\n".join(lines)

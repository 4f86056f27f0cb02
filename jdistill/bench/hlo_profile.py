"""Per-op timing of compiled XLA programs from a `jax.profiler` trace (used by `jdistill bench train-step
--profile`).

The XLA CPU runtime records one trace event per executed thunk (a fusion, a dot, a copy...) named after its HLO
instruction, on the client's worker threads. `op_table` sums those events per name over the traced steps and
divides by the step count; the share column is each op's part of the summed op time (ops may overlap when XLA
runs independent thunks concurrently, so shares, not the sum, are the honest figure). Each row also carries
the op's kind (`fusion`, `dot`, `copy`, ...) and, for fusions, the HLO opcodes inside it, read from the
compiled module's text, so one can see where elementwise transcendental ops and transposes sit.
"""

from __future__ import annotations

import collections
import glob
import os
import re

_SKIP = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "end: ", "Await", "PjRt", "Execute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


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


def trace_op_times(trace_dir: str) -> dict[str, float]:
    """{event name: total nanoseconds} of the XLA runtime's op events in the newest trace under `trace_dir`."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        return {}
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in ProfileData.from_file(files[-1]).planes:
        for line in plane.lines:
            if line.name == "python" or not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.duration_ns and not any(part in event.name for part in _SKIP):
                    totals[event.name] += event.duration_ns
    return dict(totals)


def op_table(trace_dir: str, hlo_text: str, steps: int, top: int = 40) -> list[dict]:
    """Rows {op, kind, ms_per_step, share} sorted by time, the `top` largest."""
    times = trace_op_times(trace_dir)
    summary = hlo_op_summary(hlo_text)
    total = sum(times.values()) or 1.0
    rows = [dict(op=name, kind=summary.get(name, "?"), ms_per_step=ns / steps / 1e6, share=ns / total)
            for name, ns in times.items()]
    rows.sort(key=lambda row: -row["ms_per_step"])
    return rows[:top]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'op':<40} {'ms/step':>9} {'share':>6}  kind"]
    lines += [f"{row['op'][:40]:<40} {row['ms_per_step']:>9.3f} {row['share']:>6.1%}  {row['kind'][:90]}"
              for row in rows]
    return "\n".join(lines)

"""JSON lines (`metrics.jsonl`, one object a line) that survive a process killed mid-write.

Writers append each record as one line in one write call (`jdistill.io.fs.Appender`), so a kill leaves at most a
partial last line. Readers skip a line that does not parse (with one warning line on stderr) instead of failing.
"""

from __future__ import annotations

import json
import sys

from jdistill.io import fs, strict_json


def read_jsonl(target: fs.PathLike) -> list[dict]:
    """The records of `target` (a local path or gs:// URL) in order; [] when it does not exist. Lines that are not a
    JSON object (a partial last line written by a killed process) are skipped with one warning on stderr."""
    target = fs.path(target)
    if not target.exists():
        return []
    records, bad = [], []
    for number, line in enumerate(target.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        print(
            f"jdistill: {target}: skipped {len(bad)} unreadable line(s) (line {bad[0]}: cut short by a kill?)",
            file=sys.stderr,
        )
    return records


def line(record: dict) -> bytes:
    """`record` as one strict JSON line (non-finite numbers as null), UTF-8."""
    return (strict_json.dumps(record) + "\n").encode("utf-8")


def write_jsonl_atomic(target: fs.PathLike, records: list[dict]) -> None:
    """Replace `target` with `records`, one a line, atomically (`fs.write_bytes_atomic`)."""
    fs.write_bytes_atomic(target, b"".join(line(record) for record in records))

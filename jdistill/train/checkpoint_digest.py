"""Checksums of a checkpoint's files, written when it is saved and checked before it is restored.

Orbax / TensorStore notice a truncated or deleted file, but not every overwritten one: a data file zeroed (or
otherwise rewritten) after the save can restore without error into wrong values, or sit unread until the state
that lives in it is needed. So each saved step gets `jdistill_checksums.json` beside its files (size and CRC-32 of
every file, written through a temporary name) and a restore first compares them: any difference makes the step
damaged, which `jdistill.train.resume.restore_newest` reports and skips like a failed read. A step saved without
the manifest (a run killed between orbax's rename and the manifest's write, or an older run) is restored
unchecked.
"""

from __future__ import annotations

import json
import zlib

from jdistill.io import fs, strict_json

MANIFEST = "jdistill_checksums.json"
_CHUNK = 1 << 22  # 4 MiB reads


def _crc32(file) -> int:
    crc = 0
    with file.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir) -> dict[str, fs.AnyPath]:
    """{path relative to `step_dir` (POSIX): file} of every file under it but the manifest."""
    found = {}
    for file in step_dir.rglob("*"):
        relative = file.relative_to(step_dir).as_posix()
        if relative != MANIFEST and file.is_file():
            found[relative] = file
    return found


def write_manifest(step_dir) -> None:
    """Record the size and CRC-32 of every file of the saved step in `step_dir/jdistill_checksums.json`."""
    step_dir = fs.path(step_dir)
    files = {
        name: {"bytes": file.stat().st_size, "crc32": _crc32(file)} for name, file in sorted(_files(step_dir).items())
    }
    fs.write_text_atomic(step_dir / MANIFEST, strict_json.dumps({"format": 1, "files": files}, indent=1) + "\n")


def manifest_problem(step_dir) -> str | None:
    """None when every file the manifest lists is there with its size and CRC-32 (or there is no manifest), else
    the first difference in one line."""
    step_dir = fs.path(step_dir)
    manifest = step_dir / MANIFEST
    if not manifest.exists():
        return None
    try:
        listed = json.loads(manifest.read_text())["files"]
        expected = {str(name): (int(entry["bytes"]), int(entry["crc32"])) for name, entry in listed.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__}), so its files cannot be checked"
    present = _files(step_dir)
    for name, (size, crc) in expected.items():
        file = present.get(name)
        if file is None:
            return f"{name} is missing"
        actual_size = file.stat().st_size
        if actual_size != size:
            return f"{name} has {actual_size} bytes, {size} were written"
        actual_crc = _crc32(file)
        if actual_crc != crc:
            return f"{name} changed since it was written (CRC-32 {actual_crc:08x}, written {crc:08x})"
    return None

"""The checksums written with a checkpoint step: every kind of change to its files is named in one line."""

import json

from jdistill.train.checkpoint_digest import MANIFEST, manifest_problem, write_manifest


def _step(tmp_path):
    step = tmp_path / "20"
    (step / "default" / "d").mkdir(parents=True)
    (step / "default" / "d" / "data").write_bytes(bytes(range(256)) * 40)
    (step / "_CHECKPOINT_METADATA").write_text('{"step": 20}')
    write_manifest(step)
    return step


def test_an_untouched_step_and_a_step_without_manifest_pass(tmp_path):
    step = _step(tmp_path)
    listed = json.loads((step / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["_CHECKPOINT_METADATA", "default/d/data"]
    assert listed["default/d/data"]["bytes"] == 10240
    assert manifest_problem(step) is None
    (step / MANIFEST).unlink()
    assert manifest_problem(step) is None  # saved before checksums existed, or killed before they were written


def test_each_change_is_named(tmp_path):
    step = _step(tmp_path)
    data = step / "default" / "d" / "data"
    content = bytearray(data.read_bytes())
    content[5000] ^= 0x80
    data.write_bytes(bytes(content))
    assert manifest_problem(step).startswith("default/d/data changed since it was written (CRC-32 ")
    data.write_bytes(bytes(len(content)))  # zeroed, same size
    assert "default/d/data changed since it was written" in manifest_problem(step)
    data.write_bytes(bytes(content[:100]))
    assert manifest_problem(step) == "default/d/data has 100 bytes, 10240 were written"
    data.unlink()
    assert manifest_problem(step) == "default/d/data is missing"
    (step / MANIFEST).write_bytes(bytes(50))
    assert manifest_problem(step).startswith(f"{MANIFEST} is unreadable")

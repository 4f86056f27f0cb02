"""Damaged Hugging Face checkpoints: every kind of bad `config.json`, safetensors file, shard and index is one
`HFImportError` line naming the file (and the key) and what was expected -- through `jdistill.hf.from_pretrained`
and through `jdistill train` with `teacher.init_from=hf:DIR` / `student.init_from=hf:DIR` (exit 2, no traceback,
no run directory). A teacher whose vocabulary does not fit the student is refused before any stage trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jdistill.errors import UserError
from jdistill.hf import HFImportError, from_pretrained, save_pretrained
from tests.hf.tiny import tiny_config, tiny_model

INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A 1-layer Llama-architecture checkpoint (vocab 256: the byte tokenizer's ids) and a sharded copy."""
    root = tmp_path_factory.mktemp("hf_good")
    save_pretrained(tiny_model(tiny_config("llama", num_layers=1, vocab_size=256)), root / "single")
    tensors = load_file(root / "single" / "model.safetensors")
    sharded = root / "sharded"
    shutil.copytree(root / "single", sharded)
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {SHARDS[0]: names[: len(names) // 2], SHARDS[1]: names[len(names) // 2 :]}
    for shard, part in halves.items():
        save_file({name: tensors[name] for name in part}, sharded / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, part in halves.items() for name in part}
    (sharded / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def _config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def _without(directory: Path, key: str) -> None:
    config = _config(directory)
    del config[key]
    (directory / "config.json").write_text(json.dumps(config))


def _set(**changes):
    def damage(directory: Path) -> None:
        config = {**_config(directory), **changes}
        (directory / "config.json").write_text(json.dumps(config))

    return damage


def _write(name: str, data: bytes | str):
    def damage(directory: Path) -> None:
        path = directory / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return damage


def _no_head_dim(**changes):
    def damage(directory: Path) -> None:
        config = {**_config(directory), **changes}
        del config["head_dim"]
        (directory / "config.json").write_text(json.dumps(config))

    return damage


def _truncate(name: str, keep: float | int):
    def damage(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])

    return damage


def _zero(name: str):
    def damage(directory: Path) -> None:
        (directory / name).write_bytes(bytes(len((directory / name).read_bytes())))

    return damage


def _random(name: str):
    def damage(directory: Path) -> None:
        (directory / name).write_bytes(np.random.default_rng(0).bytes(4096))

    return damage


def _tensors(name: str, change):
    def damage(directory: Path) -> None:
        tensors = load_file(directory / name)
        change(tensors)
        save_file(tensors, directory / name, metadata={"format": "pt"})

    return damage


def _index(change):
    def damage(directory: Path) -> None:
        index = json.loads((directory / INDEX).read_text())
        (directory / INDEX).write_text(json.dumps(change(index)))

    return damage


def _pop(mapping: dict, key: str) -> dict:
    mapping.pop(key)
    return mapping


def _first_tensor(tensors: dict) -> str:
    return sorted(tensors)[0]


def _point(name: str):
    return lambda index: {"weight_map": {**index["weight_map"], sorted(index["weight_map"])[0]: name}}


def _config_dir(directory: Path) -> None:
    (directory / "config.json").unlink()
    (directory / "config.json").mkdir()


# kind -> (checkpoint: single / sharded, damage, what the message names: file name, then an expected fragment)
DAMAGE = {
    # config.json
    "config-list": ("single", _write("config.json", "[{}]"), ("config.json", "expected a JSON object")),
    "config-string": ("single", _write("config.json", '"llama"'), ("config.json", "got a string")),
    "config-null": ("single", _write("config.json", "null"), ("config.json", "got null")),
    "config-truncated": ("single", _write("config.json", '{"hidden_size": 3'), ("config.json", "not valid JSON")),
    "config-empty": ("single", _write("config.json", ""), ("config.json", "not valid JSON")),
    "config-binary": ("single", _write("config.json", b"\xff\xfe\x00\x01"), ("config.json", "not UTF-8")),
    "config-directory": ("single", _config_dir, ("config.json", "no such file")),
    **{
        f"missing-{key}": ("single", lambda d, key=key: _without(d, key), ("config.json", f"{key}: missing"))
        for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    },
    "heads-string": ("single", _set(num_attention_heads="4"), ("config.json", "num_attention_heads: expected")),
    "hidden-float": ("single", _set(hidden_size=32.5), ("config.json", "hidden_size: expected a positive integer")),
    "vocab-null": ("single", _set(vocab_size=None), ("config.json", "vocab_size: expected a positive integer")),
    "layers-bool": ("single", _set(num_hidden_layers=True), ("config.json", "num_hidden_layers: expected")),
    "zero-heads": ("single", _no_head_dim(num_attention_heads=0), ("config.json", "num_attention_heads: expected")),
    "zero-kv-heads": ("single", _set(num_key_value_heads=0), ("config.json", "num_key_value_heads: expected")),
    "zero-layers": ("single", _set(num_hidden_layers=0), ("config.json", "num_hidden_layers: expected")),
    "zero-head-dim": ("single", _set(head_dim=0), ("config.json", "head_dim: expected")),
    "negative-vocab": ("single", _set(vocab_size=-5), ("config.json", "vocab_size: expected a positive integer")),
    "negative-mlp": ("single", _set(intermediate_size=-1), ("config.json", "intermediate_size: expected")),
    "negative-positions": ("single", _set(max_position_embeddings=-1), ("config.json", "max_position_embeddings")),
    "heads-not-dividing": ("single", _no_head_dim(num_attention_heads=5), ("config.json", "a divisor of hidden_size")),
    "kv-not-dividing": ("single", _set(num_key_value_heads=3), ("config.json", "num_key_value_heads: expected a")),
    "architectures-string": ("single", _set(architectures="Llama"), ("config.json", "architectures: expected")),
    "architecture-unknown": ("single", _set(architectures=["GPT2LMHeadModel"]), ("config.json", "not supported")),
    "rope-theta-string": ("single", _set(rope_theta="1e4"), ("config.json", "rope_theta: expected")),
    "norm-eps-negative": ("single", _set(rms_norm_eps=-1e-6), ("config.json", "rms_norm_eps: expected")),
    "rope-scaling-list": ("single", _set(rope_scaling=[8.0]), ("config.json", "rope_scaling: expected an object")),
    "rope-llama3-incomplete": (
        "single",
        _set(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
        ("config.json", "rope_scaling.low_freq_factor: expected"),
    ),
    "tie-string": ("single", _set(tie_word_embeddings="yes"), ("config.json", "tie_word_embeddings: expected")),
    "config-wrong-size": ("single", _set(intermediate_size=40), ("model.safetensors", "does not match the config")),
    # model.safetensors
    "weights-empty": ("single", _write("model.safetensors", b""), ("model.safetensors", "not a readable safetensors")),
    "weights-half": ("single", _truncate("model.safetensors", 0.5), ("model.safetensors", "truncated or damaged")),
    "weights-header-only": ("single", _truncate("model.safetensors", 8), ("model.safetensors", "not a readable")),
    "weights-last-byte": ("single", _truncate("model.safetensors", 0.9999), ("model.safetensors", "not a readable")),
    "weights-zeroed": ("single", _zero("model.safetensors"), ("model.safetensors", "not a readable safetensors")),
    "weights-random": ("single", _random("model.safetensors"), ("model.safetensors", "not a readable safetensors")),
    "weights-missing": (
        "single",
        lambda d: (d / "model.safetensors").unlink(),
        ("", f"neither model.safetensors nor {INDEX} found"),
    ),
    "tensor-missing": (
        "single",
        _tensors("model.safetensors", lambda t: t.pop(_first_tensor(t))),
        ("", "missing tensor lm_head.weight"),
    ),
    "tensor-wrong-shape": (
        "single",
        _tensors("model.safetensors", lambda t: t.update({"model.norm.weight": np.ones(7, np.float32)})),
        ("model.safetensors", "model.norm.weight: shape (7,) does not match the config"),
    ),
    # sharded checkpoints
    "index-not-json": ("sharded", _write(INDEX, "{"), (INDEX, "not valid JSON")),
    "index-list": ("sharded", _write(INDEX, "[]"), (INDEX, "weight_map")),
    "index-no-weight-map": ("sharded", _index(lambda index: _pop(index, "weight_map")), (INDEX, "weight_map")),
    "index-entry-number": ("sharded", _index(_point(3)), (INDEX, "expected a file name in the folder")),
    "index-escapes": ("sharded", _index(_point("../model.safetensors")), (INDEX, "expected a file name in the")),
    "index-absolute": ("sharded", _index(_point("/etc/passwd")), (INDEX, "expected a file name in the folder")),
    "shard-missing": ("sharded", lambda d: (d / SHARDS[1]).unlink(), (SHARDS[1], "no such file (listed in")),
    "shard-truncated": ("sharded", _truncate(SHARDS[0], 0.5), (SHARDS[0], "not a readable safetensors file")),
    "shard-random": ("sharded", _random(SHARDS[1]), (SHARDS[1], "not a readable safetensors file")),
    "shard-lacks-tensor": (
        "sharded",
        _tensors(SHARDS[0], lambda t: t.pop(_first_tensor(t))),
        (SHARDS[0], f"is listed in {INDEX} but not in the file"),
    ),
}


def damaged(good: Path, tmp_path: Path, kind: str) -> Path:
    layout, damage, _ = DAMAGE[kind]
    directory = tmp_path / kind
    shutil.copytree(good / layout, directory)
    damage(directory)
    return directory


def check_message(message: str, directory: Path, kind: str) -> None:
    file, fragment = DAMAGE[kind][2]
    assert "\n" not in message and fragment in message, message
    assert f"{directory}/{file}:" in message if file else f"{directory}:" in message


def test_the_good_checkpoints_load(good):
    for layout in ("single", "sharded"):
        assert from_pretrained(good / layout).config.vocab_size == 256


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_from_pretrained_names_the_file_and_what_was_expected(kind, good, tmp_path):
    directory = damaged(good, tmp_path, kind)
    with pytest.raises(HFImportError) as caught:
        from_pretrained(directory)
    assert isinstance(caught.value, UserError)
    check_message(str(caught.value), directory, kind)


JOB_YAML = """
data: {name: pystdlib_text, seq_len: 32, eval_batch_size: 8, eval_max_batches: 1}
teacher: {model: {kind: lm}}
student:
  model: {kind: lm, num_layers: 1, d_model: 32, num_heads: 4, mlp_dim: 32}
  train: {steps: 2, batch_size: 4, warmup_steps: 0, eval_every: 2, checkpoint_every: 2}
distill: {objective: forward_kl, temperature: 1.0, distill_weight: 0.5, label_weight: 0.5}
run: {progress: false, plot: false, tensorboard: false, sample_tokens: 0}
"""


def train(capsys, tmp_path: Path, *overrides: str) -> tuple[int, list[str], Path]:
    """`jdistill train` in this process: (exit code, stderr lines, run dir)."""
    from jdistill.cli import main

    (tmp_path / "job.yaml").write_text(JOB_YAML)
    run = tmp_path / "run"
    code = main(["train", "--config", str(tmp_path / "job.yaml"), "--run-dir", str(run), *overrides])
    return code, capsys.readouterr().err.strip().splitlines(), run


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_init_from_a_damaged_checkpoint_is_one_line_exit_2(kind, role, good, tmp_path, capsys):
    directory = damaged(good, tmp_path, kind)
    code, lines, run = train(capsys, tmp_path, f"{role}.init_from=hf:{directory}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"jdistill: error: {role}.init_from: ")
    check_message(lines[0], directory, kind)
    assert not run.exists()  # found before the run directory, and before any stage


@pytest.mark.parametrize(
    "teacher_vocab, recipe, expected",
    [
        (300, "gkd", "teacher.model.vocab_size (300) must equal student.model.vocab_size (256)"),
        (64, "kd", "its vocabulary (256 ids) exceeds teacher.model.vocab_size (64 embedding rows)"),
    ],
)
def test_a_teacher_vocabulary_that_does_not_fit_fails_before_any_stage(
    teacher_vocab, recipe, expected, tmp_path, capsys
):
    teacher = tmp_path / "teacher"
    save_pretrained(tiny_model(tiny_config("qwen3", num_layers=1, vocab_size=teacher_vocab)), teacher)
    code, lines, run = train(capsys, tmp_path, f"teacher.init_from=hf:{teacher}", f"distill.recipe={recipe}")
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not run.exists()  # neither the scratch student nor any other stage started


def test_the_damage_kinds_are_counted():
    """The README's count: config.json, weights, sharded-checkpoint damage kinds."""
    counts = {layout: sum(1 for value in DAMAGE.values() if value[0] == layout) for layout in ("single", "sharded")}
    assert len(DAMAGE) == counts["single"] + counts["sharded"] >= 45


def test_samples_of_a_padded_vocabulary_decode():
    """A checkpoint with more rows than the tokenizer has ids (an HF teacher of 300 rows on byte data) may emit a
    padded id in its samples: it stands for no text (it used to stop the job after the teacher, run dir written)."""
    from jdistill.eval.samples import records_from_rows
    from jdistill.text.tokenizer import BytesTokenizer

    (record,) = records_from_rows(BytesTokenizer(), [np.array([65])], [np.array([66, 298, 67])], stage="teacher")
    assert record["completion"] == "BC" and record["tokens"] == [66, 298, 67]

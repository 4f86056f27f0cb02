"""Depth pruning: exact logits of pruned models, the layer choices of each method, block influence, the CLI."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jdistill import cli
from jdistill.errors import ConfigError
from jdistill.hf import from_pretrained, save_pretrained
from jdistill.hf.prune import block_influence, layers_to_keep, prune_layers
from tests.hf.tiny import tiny_config, tiny_model, token_batch

FIXTURES = Path(__file__).parent / "fixtures"


def renumbered_checkpoint(source: Path, target: Path, keep: list[int]) -> Path:
    """An HF checkpoint whose layer j holds the tensors of `source`'s layer keep[j] (independent of prune_layers:
    tensor names are rewritten)."""
    target.mkdir()
    tensors = load_file(str(source / "model.safetensors"))
    kept = {}
    for name, value in tensors.items():
        match = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if match is None:
            kept[name] = value
        elif int(match[1]) in keep:
            kept[f"model.layers.{keep.index(int(match[1]))}.{match[2]}"] = value
    save_file(kept, str(target / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = len(keep)
    if "layer_types" in config:
        config["layer_types"] = [config["layer_types"][i] for i in keep]
        config["mlp_only_layers"] = list(range(len(keep)))
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("keep", [[0, 2, 3], [1], [0, 1, 2]])
def test_pruned_logits_equal_a_model_built_from_those_layers(tmp_path, keep):
    model = tiny_model(tiny_config("qwen3"))
    save_pretrained(model, tmp_path / "full")
    expected = from_pretrained(renumbered_checkpoint(tmp_path / "full", tmp_path / "kept", keep))
    pruned = prune_layers(model, keep)
    assert pruned.config == expected.config
    tokens = token_batch(64)
    np.testing.assert_array_equal(np.asarray(pruned(tokens).logits), np.asarray(expected(tokens).logits))
    assert model.config.num_layers == 4 and len(model.blocks) == 4  # the input model is unchanged


def test_pruning_a_hybrid_keeps_each_blocks_mixer(tmp_path):
    model = from_pretrained(FIXTURES / "qwen3_next")  # layer pattern DDDA
    pruned = prune_layers(model, [1, 3])
    assert pruned.config.layer_pattern == "DA"
    expected = from_pretrained(renumbered_checkpoint(FIXTURES / "qwen3_next", tmp_path / "kept", [1, 3]))
    tokens = token_batch(128)
    np.testing.assert_array_equal(np.asarray(pruned(tokens).logits), np.asarray(expected(tokens).logits))


@pytest.mark.parametrize(
    "method, layers, count, expected",
    [
        ("first", 4, 3, [0, 1, 2]),
        ("every_other", 4, 2, [0, 2]),
        ("every_other", 6, 3, [0, 2, 4]),
        ("every_other", 6, 4, [0, 1, 3, 4]),
        ("every_other", 28, 14, list(range(0, 28, 2))),
    ],
)
def test_layer_choices(method, layers, count, expected):
    assert layers_to_keep(method, layers, count) == expected


def test_block_influence_keeps_the_highest_scores_in_order():
    assert layers_to_keep("block_influence", 5, 3, np.array([0.5, 0.1, 0.9, 0.3, 0.6])) == [0, 2, 4]
    assert layers_to_keep("block_influence", 4, 2, np.array([0.2, 0.2, 0.2, 0.1])) == [0, 1]  # ties: earlier first


def _identity_block(model, index):
    """Block `index` returns its input: its attention and MLP output projections are zero."""
    block = model.blocks[index]
    block.attention.output.kernel[...] = np.zeros(block.attention.output.kernel.shape, np.float32)
    block.mlp.down.kernel[...] = np.zeros(block.mlp.down.kernel.shape, np.float32)


def test_block_influence_matches_numpy_and_drops_an_identity_block_first():
    model = tiny_model(tiny_config("llama", num_layers=4))
    _identity_block(model, 2)
    tokens = [token_batch(64, (2, 9), seed) for seed in (1, 2)]
    masks = [np.ones((2, 9), bool), np.arange(9)[None, :].repeat(2, 0) < np.array([[4], [9]])]
    batches = [{"inputs": t, "mask": m} for t, m in zip(tokens, masks, strict=True)]
    scores = block_influence(model, batches)
    cos_sum, count = np.zeros(4), 0.0
    for batch in batches:
        hidden = [np.asarray(h, np.float64) for h in model(batch["inputs"], return_hidden_states=True).hidden_states]
        for layer in range(4):
            x, y = hidden[layer], hidden[layer + 1]
            cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
            cos_sum[layer] += cos[batch["mask"]].sum()
        count += batch["mask"].sum()
    np.testing.assert_allclose(scores, 1.0 - cos_sum / count, atol=1e-6)
    assert abs(scores[2]) < 1e-6 and min(np.delete(scores, 2)) > 1e-3
    assert layers_to_keep("block_influence", 4, 3, scores) == [0, 1, 3]


def test_layer_count_and_method_are_checked():
    with pytest.raises(ConfigError, match=r"--layers: expected an integer in \[1, 3\]"):
        layers_to_keep("first", 4, 4)
    with pytest.raises(ConfigError, match="--layers"):
        layers_to_keep("first", 4, 0)
    with pytest.raises(ConfigError, match="--method: expected one of every_other, first, block_influence"):
        layers_to_keep("middle", 4, 2)


@pytest.fixture
def teacher_dir(tmp_path):
    """A 4-layer Qwen3-architecture teacher with 272 embedding rows (256 bytes + padding) and tokenizer files."""
    directory = tmp_path / "teacher"
    save_pretrained(tiny_model(tiny_config("qwen3", vocab_size=272)), directory, extra_config={"eos_token_id": 0})
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<eos>"}')
    return directory


def test_prune_cli_block_influence_writes_a_checkpoint(teacher_dir, tmp_path, data_dir, capsys):
    out = tmp_path / "student"
    args = ["prune", "--teacher", f"hf:{teacher_dir}", "--layers", "2", "--method", "block_influence"]
    args += ["--out", str(out), "--tokenizer", "bytes", "--calibration-batches", "2", "--seq-len", "16"]
    assert cli.main(args + ["--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "block influence" in captured.err and "2/2" in captured.err and f"writing {out}" in captured.err  # progress
    rows = [line.split() for line in printed.splitlines() if re.match(r"\s+\d+\s+[-\d.]+\s+(yes|no)$", line)]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3]
    kept = [int(row[0]) for row in rows if row[2] == "yes"]
    scores = [float(row[1]) for row in rows]
    assert kept == sorted(np.argsort(-np.array(scores), kind="stable")[:2].tolist())
    student = from_pretrained(out)
    assert student.config.num_layers == 2 and student.config.vocab_size == 272
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == 0 and config["architectures"] == ["Qwen3ForCausalLM"]
    assert (out / "tokenizer_config.json").read_text() == '{"eos_token": "<eos>"}'
    expected = prune_layers(from_pretrained(teacher_dir), kept)
    tokens = token_batch(272)
    np.testing.assert_array_equal(np.asarray(student(tokens).logits), np.asarray(expected(tokens).logits))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]  # no temporary folder left


def _error(args, capsys) -> str:
    assert cli.main(args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("jdistill: error: ")
    return message


def test_prune_cli_bad_input_is_one_line(teacher_dir, tmp_path, capsys):
    base = ["prune", "--teacher", f"hf:{teacher_dir}", "--out", str(tmp_path / "out")]
    assert "--layers: expected an integer in [1, 3]" in _error(base + ["--layers", "4", "--method", "first"], capsys)
    assert "--layers" in _error(base + ["--layers", "0", "--method", "first"], capsys)
    assert "--method: expected one of" in _error(base + ["--layers", "2", "--method", "last"], capsys)
    message = _error(base + ["--layers", "2", "--method", "block_influence"], capsys)
    assert "has no tokenizer.json" in message
    missing = ["prune", "--teacher", f"hf:{tmp_path}", "--layers", "1", "--method", "first", "--out", "x"]
    assert f"{tmp_path}/config.json: no such file" in _error(missing, capsys)
    small = tmp_path / "small"
    shutil.copytree(FIXTURES / "llama", small)  # 128 embedding rows: the byte tokenizer's 256 ids do not fit
    message = _error(
        ["prune", "--teacher", f"hf:{small}", "--layers", "1", "--method", "block_influence", "--tokenizer", "bytes"]
        + ["--out", str(tmp_path / "o")],
        capsys,
    )
    assert "its vocabulary (256) exceeds the teacher's embedding (128 rows)" in message
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    args = ["prune", "--teacher", f"hf:{teacher_dir}", "--layers", "2", "--method", "first"]
    assert "already exists" in _error(args + ["--out", str(tmp_path / "full")], capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # tokenises the embedded corpus with the teacher's BPE once (~25 s of CPU)
def test_prune_calibrates_with_the_teachers_own_tokenizer(tmp_path, data_dir, capsys):
    from jdistill.text import load_tokenizer, train_tokenizer

    teacher = tmp_path / "teacher"
    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.sep)\n"] * 10
    tokenizer = train_tokenizer(texts, 300, teacher)
    save_pretrained(tiny_model(tiny_config("qwen3", vocab_size=320)), teacher)
    out = tmp_path / "student"
    args = ["prune", "--teacher", f"hf:{teacher}", "--layers", "3", "--method", "block_influence", "--out", str(out)]
    assert cli.main(args + ["--calibration-batches", "1", "--seq-len", "16", "--batch-size", "2"]) == 0
    assert "block_influence  kept" in capsys.readouterr().out
    assert load_tokenizer(f"hf:{out}").fingerprint == tokenizer.fingerprint
    assert from_pretrained(out).config.num_layers == 3

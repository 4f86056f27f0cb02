"""`jdistill export`: a run's stage as an HF checkpoint that transformers loads with the same logits; atomic writes,
tokenizer files, one-line errors."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill import cli
from jdistill.configs import load_config, to_dict
from jdistill.hf import HFImportError, export
from jdistill.text import load_tokenizer, train_tokenizer
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.rundir import write_config
from jdistill.train.state import TrainState
from tests.hf.tiny import tiny_config, tiny_model, token_batch


def fake_run(run_dir, model, stage="student_kd", tokenizer="bytes"):
    """A run directory whose `stage` has one checkpoint holding `model`'s parameters."""
    run_dir.mkdir(parents=True)
    config = load_config("lm_kd", [f"data.tokenizer={tokenizer}"])
    config = dataclasses.replace(config, student=dataclasses.replace(config.student, model=model.config))
    write_config(run_dir, to_dict(config))
    checkpointer = Checkpointer(run_dir / stage / "checkpoints", keep=1)
    params = nnx.split(model)[1]
    checkpointer.save(3, TrainState(step=jnp.array(3, jnp.int32), params=params, opt_state=(), recipe_state=()))
    checkpointer.close()
    return run_dir


@pytest.mark.parametrize(
    "architecture, tied, name", [("qwen3", True, "Qwen3ForCausalLM"), ("llama", False, "LlamaForCausalLM")]
)
def test_transformers_loads_the_export_with_the_same_logits(tmp_path, architecture, tied, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tiny_model(tiny_config(architecture, num_layers=2, vocab_size=256, tie_embeddings=tied))
    run = fake_run(tmp_path / "run", model)
    assert cli.main(["export", "--run-dir", str(run), "--stage", "student_kd", "--out", str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [name]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = token_batch(256, (2, 9))
    with torch.no_grad():
        theirs = loaded(torch.from_numpy(tokens).long()).logits.numpy()
    ours = np.asarray(model(tokens).logits)
    assert np.abs(ours).max() > 1.0
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary folder left


def test_tokenizer_files_come_with_a_non_byte_tokenizer(tmp_path):
    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 10
    tokenizer = train_tokenizer(texts, 280, tmp_path / "tok")
    model = tiny_model(tiny_config("qwen3", num_layers=1, vocab_size=320))
    run = fake_run(tmp_path / "run", model, tokenizer=f"hf:{tmp_path / 'tok'}")
    written = export.export_stage(run, "student_kd", tmp_path / "out")
    copied = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert written == ["config.json", "model.safetensors", *copied] and "tokenizer.json" in copied
    for name in copied:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "tok" / name).read_bytes()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.eos_id and config["pad_token_id"] == tokenizer.pad_id
    assert load_tokenizer(f"hf:{tmp_path / 'out'}").fingerprint == tokenizer.fingerprint
    (tmp_path / "tok" / "tokenizer.json").unlink()
    with pytest.raises(HFImportError, match=r"data.tokenizer hf:.*tok/tokenizer\.json: no such file"):
        export.export_stage(run, "student_kd", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    model = tiny_model(tiny_config("llama", num_layers=1, vocab_size=256, head_bias=True))
    run = fake_run(tmp_path / "run", model)
    args = ["export", "--run-dir", str(run), "--stage", "student_kd", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    assert "nonzero bias" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the temporary folder is removed
    assert cli.main(args[:4] + ["student_scratch", "--out", str(tmp_path / "out")]) == 2
    assert "no checkpoint to load" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert cli.main(args[:-1] + [str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1

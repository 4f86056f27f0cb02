"""`run.export`: the job's last step writes the final recipe student stage as an HF checkpoint; a job that could
not export fails in one line before any compute."""

import json

import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.hf import from_pretrained
from jdistill.train import run_job
from jdistill.train.restore import load_stage
from tests.train.test_lm_job import TINY_LM

LLAMA_LIKE = [f"student.model.{k}" for k in ("gate=none", "mlp=glu", "activation=silu", "mlp_bias=false")]
EXPORTABLE = LLAMA_LIKE + ["student.model.head_bias=false"]
QUICK = [
    "teacher.train.steps=2",
    "student.train.steps=2",
    "run.baseline=false",
    "run.sample_tokens=0",
    "run.tensorboard=false",
]


def test_the_job_exports_its_last_student_stage(tmp_path, data_dir):
    out = tmp_path / "exported"
    config = load_config("lm_kd", TINY_LM + EXPORTABLE + QUICK + [f"run.export={out}"])
    summary = run_job(config, tmp_path / "run")
    assert summary["export"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    trained, _ = load_stage(tmp_path / "run", "student_kd")
    exported = from_pretrained(out)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 16)).astype(np.int32)
    ours, theirs = np.asarray(trained(tokens).logits), np.asarray(exported(tokens).logits)
    assert np.abs(ours).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run"]  # no temporary folder left
    again = run_job(config, tmp_path / "run", resume=True)  # a finished export is kept on --resume
    assert again["export"] == str(out)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], r"run\.export: save_pretrained: only Llama / Qwen3"),  # lm_kd's headwise gates: no HF layout
        (LLAMA_LIKE, r"student\.model\.head_bias is true"),
        (EXPORTABLE + ["TAKEN"], r"run\.export .*taken: already exists and is not an empty folder"),
    ],
)
def test_an_export_that_cannot_happen_fails_before_any_stage(tmp_path, data_dir, overrides, message):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    target = taken if "TAKEN" in overrides else tmp_path / "new"
    overrides = [o for o in overrides if o != "TAKEN"]
    config = load_config("lm_kd", TINY_LM + QUICK + overrides + [f"run.export={target}"])
    with pytest.raises(ConfigError, match=message):
        run_job(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert not (tmp_path / "new").exists()


def test_remote_export_urls_are_a_config_error():
    with pytest.raises(ConfigError, match=r"run\.export expected a local folder path .* got 'gs://bucket/out'"):
        load_config("lm_kd", ["run.export=gs://bucket/out"])

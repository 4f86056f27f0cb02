"""`student.init_from` / `teacher.init_from`: the architecture comes from the checkpoint, the student stages start
from its weights, conflicts are one-line errors."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.hf import HFImportError, from_pretrained, save_pretrained
from jdistill.hf.init_from import load_init_model, merge_model, resolve_init_from
from jdistill.hf.prune import prune_layers
from jdistill.models.config import ModelConfig
from jdistill.train import run_job
from jdistill.train.restore import load_stage
from tests.hf.tiny import tiny_config, tiny_model


def test_merge_takes_the_checkpoint_architecture_and_the_config_runtime_fields():
    saved = tiny_config("qwen3")
    mine = ModelConfig(kind="lm", dtype="bfloat16", remat="full", attention_impl="xla", max_seq_len=32)
    merged = merge_model(mine, saved, "student", "ckpt/config.json")
    assert merged == dataclasses.replace(saved, dtype="bfloat16", remat="full", attention_impl="xla", max_seq_len=32)
    with pytest.raises(ConfigError, match=r"student\.model\.num_layers: 3 in the config but 4 in ckpt/config\.json"):
        merge_model(ModelConfig(kind="lm", num_layers=3), saved, "student", "ckpt/config.json")
    with pytest.raises(ConfigError, match=r"teacher\.model\.gate: 'elementwise' in the config but 'none'"):
        merge_model(ModelConfig(gate="elementwise"), saved, "teacher", "ckpt/config.json")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 4-layer teacher and its 2-layer pruned student (every other block), both HF folders (vocab 256 bytes)."""
    root = tmp_path_factory.mktemp("init_from")
    teacher = tiny_model(tiny_config("qwen3", vocab_size=256))
    save_pretrained(teacher, root / "teacher")
    save_pretrained(prune_layers(teacher, [0, 2]), root / "student")
    return root


JOB_YAML = """
data: {name: pystdlib_text, seq_len: 32, eval_batch_size: 8, eval_max_batches: 1}
teacher: {model: {kind: lm}}
student:
  model: {kind: lm}
  train: {steps: 1, batch_size: 4, learning_rate: 1.0e-9, warmup_steps: 0, eval_every: 1, checkpoint_every: 1}
distill: {objective: forward_kl, temperature: 1.0, distill_weight: 0.5, label_weight: 0.5}
run: {progress: false, plot: false, tensorboard: false}
"""


def job_config(checkpoints, *extra):
    """A tiny LM job whose models are both read from checkpoints (the config says only `kind: lm`)."""
    path = checkpoints / "job.yaml"
    path.write_text(JOB_YAML)
    overrides = [f"teacher.init_from=hf:{checkpoints / 'teacher'}", f"student.init_from=hf:{checkpoints / 'student'}"]
    return load_config(str(path), overrides + list(extra))


def test_config_resolution_reads_both_checkpoints(checkpoints, data_dir):
    config = resolve_init_from(job_config(checkpoints))
    assert config.student.model.num_layers == 2 and config.teacher.model.num_layers == 4
    assert config.student.model.qk_norm and not config.student.model.head_bias
    with pytest.raises(ConfigError, match=r"student\.model\.num_layers: 3 in the config but 2 in .*student"):
        resolve_init_from(job_config(checkpoints, "student.model.num_layers=3"))
    with pytest.raises(HFImportError, match=r"student\.init_from: .*nowhere/config\.json: no such file"):
        resolve_init_from(job_config(checkpoints, f"student.init_from=hf:{checkpoints / 'nowhere'}"))


def test_both_student_stages_start_from_the_checkpoint(checkpoints, data_dir, tmp_path):
    summary = run_job(job_config(checkpoints), tmp_path / "run")
    assert {"student_scratch", "student_kd"} <= set(summary)
    assert not (tmp_path / "run" / "teacher" / "checkpoints").exists()  # the loaded teacher is not trained
    start = nnx.state(from_pretrained(checkpoints / "student"), nnx.Param)
    for stage in ("student_scratch", "student_kd"):
        model, config = load_stage(tmp_path / "run", stage)
        assert config.student.model.num_layers == 2  # the run's config.yaml holds the checkpoint's architecture
        trained = nnx.state(model, nnx.Param)
        for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(start), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # one step at lr 1e-9


def test_a_conflicting_model_fails_before_the_run_dir_is_written(checkpoints, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"student\.model\.d_model: 48 in the config but 32"):
        run_job(job_config(checkpoints, "student.model.d_model=48"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_runs_stage_is_a_student_init(tmp_path):
    from tests.hf.test_export import fake_run

    model = tiny_model(tiny_config("llama", num_layers=1, vocab_size=256))
    run = fake_run(tmp_path / "run", model, stage="student_kd")
    stage = dataclasses.replace(load_config("lm_kd").student, init_from=str(run / "student_kd"))
    stage = dataclasses.replace(stage, model=ModelConfig(kind="lm", dtype="bfloat16"))
    loaded = load_init_model(stage, "student")
    assert loaded.config == dataclasses.replace(model.config, dtype="bfloat16", max_seq_len=256)  # runtime fields
    for a, b in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(model)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match=r"student\.init_from: .* is neither hf:DIR nor a run's stage folder"):
        load_init_model(dataclasses.replace(stage, init_from=str(tmp_path)), "student")

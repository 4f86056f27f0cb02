"""Trained stages load back (parameters only, whatever the recipe state) and serve as a pretrained teacher."""

import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError, RunDirError
from jdistill.train import run_job
from jdistill.train.restore import load_pretrained, load_stage
from tests.train.test_lm_job import TINY_LM


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("restore") / "run"
    run_job(load_config("lm_kd", TINY_LM + ["run.baseline=false"]), run_dir)
    return run_dir


def test_stages_load_back_with_their_trained_parameters(lm_run):
    model, config = load_stage(lm_run, "student_kd")
    assert model.config == config.student.model
    tokens = np.zeros((1, 8), np.int32)
    assert model(tokens).logits.shape == (1, 8, 256)
    with pytest.raises(RunDirError, match="no checkpoint"):
        load_stage(lm_run, "student_scratch")


def test_a_run_stage_is_a_pretrained_teacher_and_is_not_retrained(lm_run, tmp_path):
    teacher_model, config = load_stage(lm_run, "teacher")
    config = load_config("lm_kd", TINY_LM + ["run.baseline=false", f"teacher.init_from={lm_run / 'teacher'}"])
    loaded = load_pretrained(config.teacher)
    saved = nnx.to_flat_state(nnx.state(teacher_model, nnx.Param))
    for a, b in zip(saved, nnx.to_flat_state(loaded.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))
    summary = run_job(config, tmp_path / "run2")
    # the loaded teacher is scored (and sampled) like a trained stage, but never trained: no checkpoint of it
    assert summary["teacher"]["bits_per_byte"] > 0
    assert not list((tmp_path / "run2" / "teacher").glob("checkpoints*"))
    assert "student_kd" in summary


def test_bad_init_from_is_a_one_line_error(tmp_path, data_dir):
    config = load_config("lm_kd", TINY_LM + [f"teacher.init_from={tmp_path}"])
    with pytest.raises(ConfigError, match=r"teacher\.init_from"):
        load_pretrained(config.teacher)


def test_a_wrapped_student_loads_back(tmp_path, data_dir):
    tiny = [
        f"{stage}.{key}={value}"
        for stage in ("teacher", "student")
        for key, value in (
            ("model.d_model", 16),
            ("model.num_heads", 2),
            ("model.mlp_dim", 32),
            ("model.num_layers", 1),
            ("train.steps", 2),
            ("train.warmup_steps", 1),
            ("train.batch_size", 16),
        )
    ]
    tiny += ["data.eval_max_batches=1", "run.progress=false", "run.plot=false", "run.baseline=false"]
    run_job(load_config("mutual", tiny), tmp_path / "run")
    model, _ = load_stage(tmp_path / "run", "student_mutual")
    assert type(model).__name__ == "PeerStudents"
    assert model(np.zeros((2, 8, 8, 1), np.float32)).logits.shape == (2, 10)

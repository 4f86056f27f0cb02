"""`student.prune`: bad options are one-line ConfigErrors before any compute (at load time, or at the start of the
job before the run directory is written); the student's architecture is derived from the teacher."""

import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.configs.schema import PRUNE_METHODS
from jdistill.errors import ConfigError
from jdistill.hf.cli_args import METHODS
from jdistill.train import job
from tests.train.llm_tiny import TINY_LLM

BAD_AT_LOAD = [
    (["student.prune.layers=4"], r"student.prune.layers expected an integer in \[1, 4\)"),
    (["student.prune.layers=9"], r"student.prune.layers expected an integer in \[1, 4\)"),
    (["student.prune.layers=0"], r"student.prune.layers expected a positive integer or null"),
    (["student.prune.method=random"], r"student.prune.method expected one of 'block_influence'"),
    (["student.prune.calibration_batches=0"], r"student.prune.calibration_batches expected a positive integer"),
    (["student.model.d_model=96"], r"student.model.d_model expected 128 \(student.prune: the teacher's architecture"),
    (["student.model.num_layers=3"], r"student.model.num_layers expected 2 \(student.prune"),
    (["student.init_from=hf:/somewhere"], r"student.init_from expected null when student.prune is set"),
    (["teacher.model.kind=classifier"], r"student.prune.layers expected null \(depth pruning needs an LM teacher"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_AT_LOAD)
def test_bad_prune_options_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("llm_kd", overrides)
    assert "\n" not in str(error.value)


def test_bad_prune_option_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--config", "llm_kd", "--run-dir", str(tmp_path / "run"), "student.prune.layers=4"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "student.prune.layers expected an integer in [1, 4)" in err
    assert not (tmp_path / "run").exists()


BAD_AT_JOB = [
    (["teacher.model.gate=headwise"], r"student.prune: the pruned teacher is saved as an HF checkpoint"),
    (["teacher.model.head_bias=true"], r"teacher.model.head_bias: True cannot be held by the HF checkpoint"),
    (["distill.recipe=supervised", "distill.objective=null"], r"student.prune: recipe 'supervised' has no"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_AT_JOB)
def test_bad_prune_setups_fail_before_the_run_dir_is_written(tmp_path, data_dir, monkeypatch, overrides, message):
    def no_compute(*args, **kwargs):
        raise AssertionError("a stage started")

    monkeypatch.setattr(job, "run_stage", no_compute)
    monkeypatch.setattr(job, "with_corpus_tokenizer", lambda config: config)  # no tokenizer training needed here
    config = load_config("llm_kd", [*TINY_LLM, "data.tokenizer=bytes", *overrides])
    with pytest.raises(ConfigError, match=message):
        job.run_job(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_student_model_is_the_teacher_with_fewer_layers():
    config = job.prepared_config(load_config("llm_kd", ["data.tokenizer=bytes", "student.model.dtype=bfloat16"]))
    teacher, student = config.teacher.model, config.student.model
    assert student.num_layers == config.student.prune.layers == 2
    assert student.dtype == "bfloat16"  # a runtime field stays the student's
    for field in ("d_model", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "qk_norm", "mlp", "vocab_size"):
        assert getattr(student, field) == getattr(teacher, field), field


def test_prune_methods_match_the_hf_prune_command():
    assert set(PRUNE_METHODS) == set(METHODS)

"""gs:// run directories: every file of a run goes to the bucket (here `jdistill.io.fake_gcs`, a local stand-in),
never to a local folder named `gs:`; what cannot live in a bucket is refused in one line before any compute."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.errors import ConfigError, RunDirError
from jdistill.eval.report import plot_learning_curves
from jdistill.io import fs
from jdistill.io.events import read_scalars
from jdistill.io.fake_gcs import fake_gcs
from jdistill.train import job, run_teacher_student
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.rundir import check_run_dir, prepare_run_dir, write_config
from jdistill.train.writers import MetricsWriter, truncate_jsonl, write_json_atomic
from tests.train.conftest import TINY
from tests.train.llm_tiny import TINY_LLM, TINY_TRAIN

URL = "gs://test-bucket/runs/tiny"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake bucket's local root; the working directory is an empty folder that must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with fake_gcs(tmp_path / "gcs") as root:
        yield root
    assert os.listdir(cwd) == [], "a local folder was written for a gs:// URL"


def test_gs_urls_are_cloud_paths_and_other_schemes_are_refused(bucket):
    assert os.fspath(fs.path(URL) / "metrics.jsonl") == URL + "/metrics.jsonl"
    assert fs.is_remote(fs.path(URL)) and not fs.is_remote("runs/gs:/x")
    with pytest.raises(RunDirError, match=r"^ftp://host/run: only local paths and gs:// URLs are supported$"):
        fs.path("ftp://host/run")


def test_run_files_go_to_the_bucket(bucket):
    """Each writer of a run (config, metrics, events, checkpoints, result/summary JSON, plot) on a gs:// URL."""
    run = prepare_run_dir(URL, resume=False)
    write_config(run, {"seed": 0})
    writer = MetricsWriter(run, "teacher")
    for step in (5, 10, 15):
        writer.write(step, "eval", {"accuracy": step / 100, "nll": float("nan")})
    writer.close()
    truncate_jsonl(run / "metrics.jsonl", "teacher", 10)
    checkpointer = Checkpointer(run / "teacher" / "checkpoints", keep=2)
    state = {"w": jnp.arange(4.0)}
    checkpointer.save(10, state, force=True)
    restored = checkpointer.restore(checkpointer.latest_step(), state)
    checkpointer.close()
    np.testing.assert_array_equal(restored["w"], state["w"])
    write_json_atomic(run / "summary.json", {"nll": float("inf")})
    plot_learning_curves(run / "metrics.jsonl", run / "learning_curves.png", ["teacher"])
    local = bucket / "test-bucket" / "runs" / "tiny"
    assert sorted(p.name for p in local.iterdir()) == [
        "config.yaml",
        "events",
        "learning_curves.png",
        "metrics.jsonl",
        "summary.json",
        "teacher",
    ]
    assert [json.loads(line)["step"] for line in (local / "metrics.jsonl").read_text().splitlines()] == [5, 10]
    assert json.loads((local / "summary.json").read_text()) == {"nll": None}
    assert (local / "teacher" / "checkpoints" / "10").is_dir()
    assert read_scalars(run / "events" / "teacher")["eval/accuracy"] == pytest.approx({5: 0.05, 10: 0.1, 15: 0.15})
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        check_run_dir(URL, resume=False)


@pytest.mark.slow  # ~30 s: a whole (tiny) job; test_run_files_go_to_the_bucket covers each writer in the default suite
def test_tiny_job_on_gs_runs_and_resumes(bucket, data_dir, capsys):
    """The default job (tiny) on a gs:// run dir: stopped after the teacher's step 15 (checkpoint at 10), resumed
    with `jdistill train --resume --run-dir gs://...`; every file in the bucket, each logged step once."""
    config = load_config("default", TINY + ["run.baseline=false"])
    assert run_teacher_student(config, URL, interrupt_at=("teacher", 15)) == {}
    assert main(["train", "--resume", "--run-dir", URL]) == 0
    assert f"wrote {URL}/summary.json" in capsys.readouterr().out
    local = bucket / "test-bucket" / "runs" / "tiny"
    summary = json.loads((local / "summary.json").read_text())
    assert {"teacher", "student_kd"} <= set(summary)
    assert (local / "learning_curves.png").stat().st_size > 0
    assert (local / "student_kd" / "checkpoints" / "20").is_dir()
    assert sorted(read_scalars(URL + "/events/teacher")["train/loss"]) == [5, 10, 15, 20]


def test_pieces_that_need_local_folders_are_refused_before_compute(bucket, data_dir, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("a stage started")

    monkeypatch.setattr(job, "run_stage", no_compute)
    monkeypatch.setattr(job, "with_corpus_tokenizer", lambda config: config)  # no tokenizer training needed here
    pruned = load_config("llm_kd", [*TINY_LLM, "data.tokenizer=bytes"])
    with pytest.raises(ConfigError, match=r"^student.prune: needs a local run directory, not gs://"):
        job.run_job(pruned, URL)
    cached = load_config("cached_topk", [*TINY_TRAIN, "data.tokenizer=bytes"])
    with pytest.raises(ConfigError, match=r"^distill.options.cache_dir: a teacher cache must be a local folder"):
        job.run_job(cached, URL)
    assert not (bucket / "test-bucket").exists()


def test_cache_teacher_refuses_gs_in_one_line(bucket, capsys):
    assert main(["cache-teacher", "--config", "cached_topk", "--run-dir", URL]) == 2
    assert capsys.readouterr().err.strip() == (
        f"jdistill: error: --run-dir {URL}: cache-teacher writes local folders; give a local path"
    )


def test_gs_without_gcsfs_is_one_line(monkeypatch):
    def missing(protocol):
        raise ImportError("Please install gcsfs to access Google Storage")

    monkeypatch.setattr(fs.fsspec, "get_filesystem_class", missing)
    with pytest.raises(RunDirError, match=r"^gs://b/run: gs:// paths need gcsfs \(pip install gcsfs"):
        check_run_dir("gs://b/run", resume=False)

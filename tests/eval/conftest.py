"""A tiny byte-level LM run (teacher + distilled student, 3 steps each), trained once per session, for the tests of
what a finished LM stage leaves behind (samples.jsonl) and of `jdistill generate` on a run directory."""

import pytest

from jdistill.configs import load_config
from jdistill.train.job import run_job

SAMPLE_TOKENS = 12
TINY_LM_RUN = [
    f"{stage}.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("model.d_model", 16),
        ("model.num_layers", 1),
        ("model.mlp_dim", 32),
        ("train.steps", 3),
        ("train.warmup_steps", 1),
        ("train.eval_every", 3),
        ("train.log_every", 3),
        ("train.checkpoint_every", 3),
        ("train.batch_size", 4),
    )
] + [
    "data.seq_len=64",
    "data.eval_batch_size=8",
    "data.eval_max_batches=3",  # 1536 bytes: the two first held-out files start in them
    f"run.sample_tokens={SAMPLE_TOKENS}",
    "run.baseline=false",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
]


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, data_dir):
    """(run directory, its Config) of the tiny lm_kd job: stages `teacher` and `student_kd`."""
    config = load_config("lm_kd", TINY_LM_RUN)
    run_dir = tmp_path_factory.mktemp("lm_run") / "run"
    run_job(config, run_dir, progress=False)
    return run_dir, config

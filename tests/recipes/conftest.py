"""A digits classifier trained once per session, the pretrained teacher (`teacher.init_from`) of the end-to-end
preset tests of the recipes with a frozen teacher: a teacher worth distilling (about 0.9 accuracy) for the price
of one compile, instead of a barely trained teacher stage compiled again in every test."""

import pytest

from jdistill.configs import load_config
from jdistill.train.job import run_job

STEPS = 300
ARCHITECTURE = {"d_model": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 1}


def model_overrides(stage: str) -> list[str]:
    """`stage`'s model set to the session teacher's architecture."""
    return [f"{stage}.model.{key}={value}" for key, value in ARCHITECTURE.items()]


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory, data_dir):
    """A trained digits classifier's stage folder (RUN_DIR/student_supervised)."""
    train = {
        "steps": STEPS,
        "warmup_steps": 5,
        "learning_rate": 0.01,
        "batch_size": 64,
        "eval_every": STEPS,
        "log_every": STEPS,
        "checkpoint_every": STEPS,
    }
    overrides = [
        "distill.recipe=supervised",
        *model_overrides("student"),
        *[f"student.train.{key}={value}" for key, value in train.items()],
        "run.baseline=false",
        "run.plot=false",
        "run.tensorboard=false",
        "run.progress=false",
    ]
    run_dir = tmp_path_factory.mktemp("digits_teacher") / "run"
    summary = run_job(load_config("default", overrides), run_dir, progress=False)
    assert summary["student_supervised"]["accuracy"] > 0.8  # a teacher worth distilling
    return run_dir / "student_supervised"


@pytest.fixture
def pretrained_teacher(digits_teacher):
    """Overrides that make a job's teacher the session teacher (and its student the same architecture)."""
    return [*model_overrides("teacher"), *model_overrides("student"), f"teacher.init_from={digits_teacher}"]

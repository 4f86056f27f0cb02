"""A tiny version of the default job, for end-to-end and resume tests."""

import pytest

TINY = [
    "teacher.model.d_model=16",
    "teacher.model.num_heads=2",
    "teacher.model.mlp_dim=32",
    "teacher.model.num_layers=1",
    "student.model.d_model=8",
    "student.model.num_heads=2",
    "student.model.mlp_dim=16",
    "teacher.train.steps=20",
    "student.train.steps=20",
    "teacher.train.warmup_steps=2",
    "student.train.warmup_steps=2",
    "teacher.train.eval_every=10",
    "student.train.eval_every=10",
    "teacher.train.log_every=5",
    "student.train.log_every=5",
    "teacher.train.checkpoint_every=10",
    "student.train.checkpoint_every=10",
    "data.eval_batch_size=128",
    "run.progress=false",
]


@pytest.fixture
def tiny_overrides(data_dir):
    return list(TINY)

"""A non-finite loss or gradient norm halts the stage with one line (stage, step, metric, last good checkpoint)
and exit status 3; `train.skip_nonfinite_steps` skips up to N such steps (the update not applied, counted as
`skipped_steps`) and halts at N + 1. The jitted step never applies a non-finite update."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.cli import main
from jdistill.configs import TrainConfig, load_config
from jdistill.errors import ConfigError, NonFiniteError
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import Supervised
from jdistill.train import create_train_state, make_train_step
from jdistill.train.job import run_job
from jdistill.train.optim import make_optimizer
from tests.reliability.tiny_job import TINY, poisoned, records

CONFIG = ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_non_finite_step_changes_nothing_but_the_step_counter():
    optimizer = make_optimizer(TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2))
    graphdef, state = create_train_state(Transformer(CONFIG, rngs=nnx.Rngs(0)), optimizer)
    step = make_train_step(graphdef, Supervised(), optimizer, seed=0)
    rng = np.random.default_rng(0)
    good = {"inputs": rng.random((8, 8, 8, 1), np.float32), "labels": rng.integers(0, 10, 8).astype(np.int32)}
    state, metrics = step(state, None, good)
    assert bool(metrics["finite"])
    before = _leaves((state.params, state.opt_state))
    bad = dict(good, inputs=np.where(np.arange(8)[:, None, None, None] == 3, np.nan, good["inputs"]))
    state, metrics = step(state, None, bad)
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2
    after = _leaves((state.params, state.opt_state))
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    state, metrics = step(state, None, good)  # training goes on from the kept state
    assert bool(metrics["finite"]) and all(np.isfinite(x).all() for x in _leaves(state.params))


def test_learning_rate_1e6_halts_with_one_line_and_exit_3(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--run-dir", str(run_dir), *TINY, "teacher.train.learning_rate=1e6"])
    err = capsys.readouterr().err.strip()
    assert code == 3, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("jdistill: error: teacher: non-finite ")
    assert " at step " in err and "last good checkpoint: none yet" in err
    assert not (run_dir / "summary.json").exists()


def test_halt_names_the_step_the_metric_and_the_last_good_checkpoint(data_dir, tmp_path):
    config = load_config("default", TINY)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError) as caught:
        run_job(config, run_dir, dataset_fns={"teacher": poisoned({13})})
    message = str(caught.value)
    assert "teacher: non-finite loss = nan at step 13;" in message
    assert f"last good checkpoint: step 10 at {run_dir.absolute()}/teacher/checkpoints/10;" in message
    assert sorted(int(p.name) for p in (run_dir / "teacher" / "checkpoints").iterdir()) == [10]
    assert max(r["step"] for r in records(run_dir)) == 10  # nothing logged past the good steps
    on_a_checkpoint_step = tmp_path / "at10"
    config = load_config("default", [*TINY, "teacher.train.log_every=3"])  # step 10: saved, not logged
    with pytest.raises(NonFiniteError, match="at step 10; training halted; last good checkpoint: none yet"):
        run_job(config, on_a_checkpoint_step, dataset_fns={"teacher": poisoned({10})})
    assert not list((on_a_checkpoint_step / "teacher" / "checkpoints").iterdir())  # checked before it is saved


def test_skip_nonfinite_steps_skips_n_and_halts_at_n_plus_1(data_dir, tmp_path):
    overrides = [*TINY, "teacher.train.skip_nonfinite_steps=2", "run.baseline=false"]
    config = load_config("default", overrides)
    run_dir = tmp_path / "skip"
    summary = run_job(config, run_dir, dataset_fns={"teacher": poisoned({3, 12})})
    assert np.isfinite(summary["teacher"]["nll"])
    teacher = records(run_dir, stage="teacher")
    assert [r["skipped_steps"] for r in teacher] == [1, 1, 2, 2]
    assert all(np.isfinite(r["loss"]) for r in teacher)  # the skipped steps' NaN is not averaged in
    with pytest.raises(NonFiniteError, match="non-finite loss = nan at step 17 after skipping 2 such steps"):
        run_job(config, tmp_path / "halt", dataset_fns={"teacher": poisoned({3, 12, 17})})


def test_skipped_steps_survive_a_resume(data_dir, tmp_path):
    config = load_config("default", [*TINY, "teacher.train.skip_nonfinite_steps=1", "run.baseline=false"])
    run_dir = tmp_path / "run"
    assert run_job(config, run_dir, interrupt_at=("teacher", 10), dataset_fns={"teacher": poisoned({3})}) == {}
    with pytest.raises(NonFiniteError, match="at step 12 after skipping 1 such steps"):
        run_job(config, run_dir, resume=True, dataset_fns={"teacher": poisoned({3, 12})})


def test_skip_nonfinite_steps_must_not_be_negative():
    with pytest.raises(ConfigError, match="skip_nonfinite_steps"):
        load_config("default", ["student.train.skip_nonfinite_steps=-1"])

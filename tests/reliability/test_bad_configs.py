"""Hundreds of bad configs through `jdistill train` (hypothesis, `bad_configs.py`): each is one line on stderr
naming the field, key or file, exit status 2, no traceback, no run directory left behind -- and nothing trains.

Runs in-process through `jdistill.cli.main` (the same code path as the console script, without a process start per
example); `run_stage` is replaced by a function that fails the test, so a config that wrongly passes validation
is reported, never trained. The default suite draws ~170 examples (< 20 s); `-m slow` draws ten times as many.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jdistill.train.job as job
from jdistill.cli import main
from tests.reliability import bad_configs


def _must_not_train(*args, **kwargs):
    raise AssertionError("a bad config reached training")


@pytest.fixture(scope="module", autouse=True)
def nothing_trains(data_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "run_stage", _must_not_train)
        patch.setattr(job, "evaluate_loaded", _must_not_train)
        yield


def train(args: list[str], run_dir: Path) -> tuple[int, str]:
    """(exit status, stderr) of `jdistill train --run-dir RUN_DIR ARGS...`."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--run-dir", str(run_dir), *args])
    return code, stderr.getvalue()


def assert_rejected(args: list[str], fragment: str, *, config_text: str | bytes | None = None) -> None:
    """One line naming `fragment`, exit 2, and no run directory (a traceback fails the test by itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        if config_text is not None:
            path = Path(tmp) / "bad.yaml"
            path.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
            args, fragment = ["--config", str(path), *args], str(path)
        code, stderr = train(args, run_dir)
        lines = stderr.strip().splitlines()
        assert code == 2, (args, stderr)
        assert len(lines) == 1 and lines[0].startswith("jdistill: error: "), (args, stderr)
        assert fragment in lines[0], (args, fragment, stderr)
        assert not run_dir.exists(), (args, "left a run directory behind")


FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
SLOW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def _both(strategy, examples: int = 20):
    """A default-suite test drawing `examples` cases and a slow one drawing ten times as many."""

    def check(case):
        args, fragment = case
        assert_rejected(args, fragment)

    fast = settings(FAST, max_examples=examples)(given(strategy)(check))
    slow = pytest.mark.slow(settings(SLOW, max_examples=10 * examples)(given(strategy)(check)))
    return fast, slow


test_non_finite_values, test_non_finite_values_slow = _both(bad_configs.non_finite_values(), 25)
test_wrong_types, test_wrong_types_slow = _both(bad_configs.wrong_types(), 25)
test_out_of_range, test_out_of_range_slow = _both(bad_configs.out_of_range(), 25)
test_unknown_keys, test_unknown_keys_slow = _both(bad_configs.unknown_keys(), 15)
test_misspelled_names, test_misspelled_names_slow = _both(bad_configs.misspelled_names(), 20)
test_bad_meshes, test_bad_meshes_slow = _both(bad_configs.bad_meshes(), 10)
test_empty_or_null, test_empty_or_null_slow = _both(bad_configs.empty_or_null(), 20)
test_malformed_overrides, test_malformed_overrides_slow = _both(st.sampled_from(bad_configs.MALFORMED), 10)


@settings(FAST, max_examples=20)
@given(bad_configs.broken_yaml_files())
def test_broken_config_files(text):
    assert_rejected([], "", config_text=text)


@pytest.mark.slow
@settings(SLOW, max_examples=200)
@given(bad_configs.broken_yaml_files())
def test_broken_config_files_slow(text):
    assert_rejected([], "", config_text=text)

"""The repro runner with a claim that trains nothing: seeds, mean / spread, verdict on the means, strict
summary.json written temp-then-rename, the PNG, and bad input caught before any measurement.

Broken on purpose: the spread with ddof 0, the verdict taken from the first seed instead of the means, the seed
folder check dropped (a rerun into the same folder), parameters not typed as their defaults, a parameter left
out of `params` dropped instead of keeping its default."""

import json
import math

import pytest

from jdistill.errors import ConfigError, RunDirError
from jdistill.repro.claim import Claim, Plot
from jdistill.repro.runner import run_claim, split_arguments
from jdistill.repro.stats import aggregate, table

CALLS = []


def _measure(context):
    CALLS.append(context)
    # seed 0: a < b; seeds 1 and 2: a > b, so the means say a > b while the first seed says no
    return {"a": 1.0 if context.seed == 0 else 1.5, "b": 1.2 + 0.1 * context.params["scale"]}


FAKE = Claim(
    name="fake",
    statement="a beats b",
    paper="nobody 2024",
    setting="none",
    rule="mean a > mean b",
    measure=_measure,
    held=lambda means: means["a"] > means["b"],
    plot=Plot(ylabel="value (units)", xlabel="number", bars=(("a", "a", "first"), ("b", "b", "second"))),
    quick=("student.train.steps=3",),
    presets=("pskd",),
    params={"scale": 1.0},
)


def test_aggregate_is_mean_and_sample_std_per_number():
    numbers = aggregate([{"x": 1.0}, {"x": 2.0}, {"x": 4.0}])
    assert numbers["x"]["mean"] == pytest.approx(7 / 3)
    assert numbers["x"]["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert numbers["x"]["per_seed"] == [1.0, 2.0, 4.0]
    assert aggregate([{"x": 3.0}])["x"]["std"] == 0.0
    with pytest.raises(ValueError, match="seed #1"):
        aggregate([{"x": 1.0}, {"y": 1.0}])
    text = table(numbers, [0, 1, 2])
    assert "2.3333 ± 1.5275" in text and "seed 2" in text


def test_run_claim_writes_the_summary_and_the_plot(tmp_path):
    CALLS.clear()
    out = tmp_path / "out"
    summary = run_claim(FAKE, out, seeds=[0, 1, 2], quick=True, overrides=["seed=5"], params={"scale": 0.0})
    assert [c.seed for c in CALLS] == [0, 1, 2] and CALLS[0].quick == FAKE.quick
    assert [c.run_dir.name for c in CALLS] == ["seed0", "seed1", "seed2"] and CALLS[0].overrides == ("seed=5",)
    assert summary["held"] is True and summary["held_per_seed"] == [False, True, True]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == summary | {"numbers": written["numbers"]} and written["numbers"] == summary["numbers"]
    assert {"claim", "held", "numbers", "settings", "seeds"} <= set(written)
    assert written["claim"] == "fake" and written["seeds"] == [0, 1, 2]
    assert written["settings"]["params"] == {"scale": 0.0} and written["settings"]["quick"] is True
    assert written["numbers"]["a"]["mean"] == pytest.approx(4 / 3)
    assert (tmp_path / "out" / "fake.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fake.png", "summary.json"]  # no temp files


def test_a_parameter_left_out_keeps_its_default(tmp_path):
    CALLS.clear()
    summary = run_claim(FAKE, tmp_path / "out", seeds=[0], params={})
    assert CALLS[0].params == {"scale": 1.0} and summary["settings"]["params"] == {"scale": 1.0}


def test_a_non_finite_number_is_written_as_null(tmp_path):
    nan_claim = Claim(**{**FAKE.__dict__, "measure": lambda context: {"a": float("nan"), "b": 1.0}})
    run_claim(nan_claim, tmp_path, seeds=[0])
    assert json.loads((tmp_path / "summary.json").read_text())["numbers"]["a"]["mean"] is None


def test_bad_input_fails_before_any_measurement(tmp_path):
    CALLS.clear()
    with pytest.raises(ConfigError, match=r"student\.train\.stepz"):
        run_claim(FAKE, tmp_path / "a", seeds=[0], overrides=["student.train.stepz=3"])
    (tmp_path / "b" / "seed1").mkdir(parents=True)
    with pytest.raises(RunDirError, match="seed1: already exists"):
        run_claim(FAKE, tmp_path / "b", seeds=[0, 1])
    assert CALLS == []


def test_arguments_split_into_config_overrides_and_typed_claim_parameters():
    overrides, params = split_arguments(FAKE, ["student.train.steps=7", "scale=2"])
    assert overrides == ["student.train.steps=7"] and params == {"scale": 2.0} and isinstance(params["scale"], float)
    with pytest.raises(ConfigError, match=r"no parameter 'scal' \(did you mean scale\?\)"):
        split_arguments(FAKE, ["scal=2"])
    with pytest.raises(ConfigError, match="--seeds"):
        split_arguments(FAKE, ["seed=3"])
    with pytest.raises(ConfigError, match="expected a float for scale"):
        split_arguments(FAKE, ["scale=abc"])


def test_plot_panels_are_drawn_side_by_side(tmp_path):
    """A panel per `Plot.panels` entry beside the first: the PNG is as wide as the panels together."""
    import dataclasses

    import matplotlib.image

    from jdistill.repro.plot import plot_claim

    numbers = aggregate([{"a": 1.0, "b": 2.0, "c": 3000.0}])
    widths = []
    for panels in ((), (("tokens/s", "length", (("c", "c", "speed"),)),)):
        claim = dataclasses.replace(FAKE, plot=dataclasses.replace(FAKE.plot, panels=panels))
        plot_claim(claim, numbers, True, [0], tmp_path / "p.png")
        widths.append(matplotlib.image.imread(tmp_path / "p.png").shape[1])
    assert widths[1] == 2 * widths[0]

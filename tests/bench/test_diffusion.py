"""`jdistill bench diffusion`: the issue's JSON layout with a real (untrained) DiT / MLP teacher, a registered
student, a stand-in feature network; one-line errors for bad input."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.bench import diffusion as bench
from jdistill.bench.diffusion_students import Student
from jdistill.cli import main
from jdistill.diffusion.data import digits, toy2d
from jdistill.diffusion.denoisers import DiT, MLPDenoiser
from jdistill.diffusion.load import TrainedDenoiser
from jdistill.diffusion.schedules import EDM, RectifiedFlow
from jdistill.errors import ConfigError, RunDirError
from jdistill.models import ModelConfig

SEEDS = 2
NFES = (1, 2)
TOY_SAMPLES = 256


class StandInClassifier:
    """Features: 6 fixed random projections of the pixels; predictions: the nearest train-class mean."""

    def __init__(self, data_dir):
        self.info = {"key": "stand-in", "test_accuracy": None, "train_seconds": 0.0}
        images, labels = digits("train", data_dir)
        flat = images.reshape(len(images), -1)
        self.means = np.stack([flat[labels == c].mean(0) for c in range(10)])
        self.projection = np.random.default_rng(0).normal(size=(64, 6))

    def features_and_predictions(self, images):
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        predictions = ((flat[:, None] - self.means[None]) ** 2).sum(-1).argmin(1)
        return flat @ self.projection, predictions

    def features(self, images):
        return self.features_and_predictions(images)[0]


@functools.cache
def _table(data_dir):
    images, labels = digits("train", data_dir)
    return images, labels


def collapsed_student(context, data, seed):
    return _collapsed(context.data_dir)


@functools.cache
def _collapsed(data_dir):
    """A mode-collapsed 'student': always the first train digit of the requested class (the same for every seed)."""
    images, labels = _table(data_dir)
    firsts = jnp.asarray(np.stack([images[labels == c][0] for c in range(10)]))
    draw = jax.jit(lambda key, wanted: firsts[wanted])
    return bench.Generator(lambda nfe: draw, lambda nfe: draw)


def oracle_student(context, data, seed):
    return _oracle(context.data_dir, context.toy, data)


@functools.cache
def _oracle(data_dir, toy, data):
    """A 'student' that returns real data: train digits of the requested class, or fresh toy points (one
    generator for every seed: one compilation)."""
    if data == "digits":
        images, labels = _table(data_dir)
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(10))
        counts = np.bincount(labels, minlength=10)
        table = jnp.asarray(images[order])

        def draw(key, wanted):
            offset = jax.random.randint(key, wanted.shape, 0, 10_000) % jnp.asarray(counts)[wanted]
            return table[jnp.asarray(starts)[wanted] + offset]

    else:

        def draw(key, wanted):
            return toy2d(toy, jax.random.fold_in(key, 7), wanted.shape[0])

    jitted = jax.jit(draw)
    return bench.Generator(lambda nfe: jitted, lambda nfe: jitted, conditional=data == "digits")


STUDENTS = {
    "oracle": Student("tests.bench.test_diffusion:oracle_student", data=("digits", "toy2d"), nfes=(1,)),
    "collapsed": Student("tests.bench.test_diffusion:collapsed_student", nfes=(1,)),
}


def _randomised(make):
    """The module `make()` builds, with every parameter drawn from N(0, 0.3^2) so that its output depends on every
    input (a fresh DiT's zero-initialised modulation and output layers would ignore the labels); one compiled
    program, not op by op."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    leaves, treedef = jax.tree.flatten(abstract)

    def draw():
        keys = jax.random.split(jax.random.key(1), len(leaves))
        return [0.3 * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves, strict=True)]

    return nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.jit(draw)()))


@functools.cache
def _teachers(num_classes=10):
    config = ModelConfig(kind="classifier", num_layers=1, d_model=8, num_heads=1, mlp_dim=16, patch_size=8)
    dit = _randomised(lambda: DiT(config, EDM(), num_classes=num_classes, rngs=nnx.Rngs(0)))
    make_mlp = lambda: MLPDenoiser(RectifiedFlow(), hidden=16, num_layers=1, rngs=nnx.Rngs(0))
    mlp = nnx.merge(nnx.graphdef(nnx.eval_shape(make_mlp)), jax.jit(lambda: nnx.state(make_mlp()))())  # as initialised
    return {"digits": TrainedDenoiser(dit, EDM(), None, 0), "toy2d": TrainedDenoiser(mlp, RectifiedFlow(), None, 0)}


@pytest.fixture(scope="module")
def result(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    settings = bench.Settings(
        json_path=str(folder / "bench.json"),
        seeds=SEEDS,
        teacher_nfe=NFES,
        teacher_sampler="euler",
        toy_samples=TOY_SAMPLES,
        toy_seeds=1,
        repeats=1,
        data_dir=str(data_dir),
    )
    out = bench.run(settings, classifier=StandInClassifier(data_dir), teachers=_teachers(), students=STUDENTS)
    return folder, out


def test_json_layout_is_the_issues(result):
    folder, out = result
    assert {"teacher", "students", "real_fd", "toy2d", "goals"} <= set(out)
    assert out["goals"] == {}  # none of the issue's goals names these stand-in students
    digits_keys = {"fd", "precision", "recall", "class_accuracy", "samples_per_s"}
    assert set(out["teacher"]) == {"1", "2"} and set(out["students"]) == {"oracle", "collapsed"}
    assert set(out["students"]["oracle"]) == {"1"}
    for entry in [*out["teacher"].values(), *out["students"]["oracle"].values()]:
        assert set(entry) == digits_keys and all(np.isfinite(entry[key]) for key in digits_keys)
    toy = out["toy2d"]
    assert toy["distribution"] == "8gaussians" and set(toy["teacher"]) == {"1", "2"}
    for entry in [*toy["teacher"].values(), *toy["students"]["oracle"].values()]:
        assert set(entry) == {"swd", "mmd", "samples_per_s"}
    per_seed = out["per_seed"]["teacher"]["2"]
    assert set(per_seed) == digits_keys - {"samples_per_s"} and all(len(v) == SEEDS for v in per_seed.values())
    assert out["teacher"]["2"]["fd"] == pytest.approx(np.mean(per_seed["fd"]))
    assert len(out["per_seed"]["students"]["oracle"]["1"]["fd"]) == SEEDS
    assert len(out["per_seed"]["toy2d"]["teacher"]["2"]["swd"]) == 1 == len(out["settings"]["toy_seeds"])  # --toy-seeds
    json.loads(json.dumps(out))  # plain JSON types throughout
    grids = sorted(p.name for p in (folder / "bench_grids").iterdir())
    assert grids == [
        "digits_collapsed_nfe1.png",
        "digits_oracle_nfe1.png",
        "digits_teacher_nfe1.png",
        "digits_teacher_nfe2.png",
        "toy2d_oracle.png",
        "toy2d_teacher.png",
    ]


def test_metrics_rank_real_data_above_an_untrained_teacher(result):
    _, out = result
    oracle, teacher = out["students"]["oracle"]["1"], out["teacher"]["2"]
    assert oracle["fd"] < 0.1 * teacher["fd"] and out["real_fd"] < 0.1 * teacher["fd"]
    assert oracle["precision"] > 0.8 and oracle["recall"] > 0.8 and teacher["precision"] < 0.2
    assert oracle["class_accuracy"] > 0.8 and out["real"]["class_accuracy"] > 0.8
    assert out["real"]["test_examples"] == 360 and out["real"]["train_examples"] == 1437
    collapsed = out["students"]["collapsed"]["1"]  # ten real images: all inside the data, covering little of it
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1 and collapsed["class_accuracy"] > 0.5
    toy = out["toy2d"]
    # the untrained flow's velocity is 0 (zero-initialised output), so its samples are its N(0, I) prior
    assert toy["students"]["oracle"]["1"]["swd"] < 0.5 * toy["teacher"]["1"]["swd"]
    assert toy["real_swd"] < 0.5 * toy["teacher"]["1"]["swd"] and abs(toy["real_mmd"]) < toy["teacher"]["1"]["mmd"]


def test_throughput_is_reported_against_the_single_evaluation(result):
    _, out = result
    for nfe, entry in out["throughput"]["teacher"].items():
        assert entry["samples_per_s"] == out["teacher"][nfe]["samples_per_s"] > 0
        expected = entry["samples_per_s"] * int(nfe) / entry["forward_samples_per_s"]
        assert entry["ratio"] == pytest.approx(expected) and entry["goal_met"] == (entry["ratio"] >= 0.8)
        cpu = entry["cpu_samples_per_s"] * int(nfe) / entry["cpu_forward_samples_per_s"]
        assert entry["cpu_ratio"] == pytest.approx(cpu) and entry["cpu_goal_met"] == (entry["cpu_ratio"] >= 0.8)
    assert set(out["throughput"]["toy2d"]["students"]["oracle"]) == {"1"}
    assert "teacher" in bench.format_result(out) and "oracle" in bench.format_result(out)


def test_denoiser_generator_draws_with_the_library_sampler():
    model = _randomised(lambda: MLPDenoiser(RectifiedFlow(), hidden=8, num_layers=1, num_classes=3, rngs=nnx.Rngs(0)))
    generator = bench.denoiser_generator(model, RectifiedFlow(), sampler="flow_euler")
    labels = jnp.arange(4) % 3
    samples = generator.draw(2)(jax.random.key(3), labels)
    from jdistill.diffusion.samplers import make_sampler

    run, params = make_sampler(model, RectifiedFlow(), sampler="flow_euler", nfe=2)
    noise_key, sampler_key = jax.random.split(jax.random.key(3))
    expected = run(params, RectifiedFlow().prior(noise_key, (4, 2)), labels, sampler_key)
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(generator.draw(2)(jax.random.key(3), (labels + 1) % 3), samples, atol=1e-3)  # follows labels
    assert generator.conditional and generator.forward(2)(jax.random.key(0), labels).shape == (4, 2)


def test_bad_settings_are_one_line_errors(tmp_path, data_dir):
    good = bench.Settings(json_path=str(tmp_path / "b.json"), data_dir=str(data_dir))
    cases = {
        "--seeds: expected at least 1": dict(seeds=0),
        r"--teacher-nfe: every NFE must be >= 1, got \[1, 0\]": dict(teacher_nfe=(1, 0)),
        "--teacher-sampler: unknown sampler 'bogus'": dict(teacher_sampler="bogus"),
        "--methods: unknown method 'nope'; expected one of: oracle": dict(methods=("nope",)),
        "unknown 2-D distribution 'spiral'": dict(toy="spiral"),
        "--toy-seeds: expected at least 1": dict(toy_seeds=0),
        "folder .*missing does not exist": dict(json_path=str(tmp_path / "missing" / "b.json")),
    }
    for message, change in cases.items():
        with pytest.raises(Exception, match=message) as error:
            bench.run(dataclasses.replace(good, **change), students=STUDENTS)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="classifier-free guidance needs a class-conditional model"):
        bench.run(dataclasses.replace(good, guidance_scale=2.0), teachers=_teachers(num_classes=0), students={})
    with pytest.raises(ConfigError, match="flow_euler integrates a rectified flow"):
        bench.run(dataclasses.replace(good, teacher_sampler="flow_euler"), teachers=_teachers(), students={})


def test_teacher_of_the_wrong_kind(monkeypatch):
    toy_teacher = _teachers()["toy2d"]
    monkeypatch.setattr("jdistill.diffusion.load.load_denoiser", lambda run_dir: toy_teacher)
    with pytest.raises(RunDirError, match=r"runs/toy: its denoiser draws samples of shape \[2\], not 8x8 digits"):
        bench.load_teacher("runs/toy", "digits")


def test_cli_errors_exit_2_before_any_compute(tmp_path, capsys):
    assert main(["bench", "diffusion", "--json", str(tmp_path / "b.json"), "--teacher", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"jdistill: error: {tmp_path}: not a run directory (no config.yaml)"
    assert main(["bench", "diffusion", "--json", str(tmp_path / "b.json"), "--seeds", "0"]) == 2
    assert "--seeds: expected at least 1 seed, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_teachers_trained_from_the_presets_then_reused(tmp_path, data_dir, monkeypatch):
    """The whole path of `jdistill bench diffusion` without run dirs: both presets trained for a few steps into the
    work dir, the real digits-FD classifier, the JSON written; a second run loads the teachers it finds."""
    monkeypatch.setenv("JDISTILL_CACHE_DIR", os.environ.get("JDISTILL_CACHE_DIR") or str(tmp_path / "cache"))
    settings = ["--seeds", "1", "--teacher-nfe", "1,2", "--toy", "two_moons", "--toy-samples", "64", "--repeats", "1"]
    out = tmp_path / "bench.json"
    argv = ["bench", "diffusion", "--json", str(out), "--teacher-steps", "3", "--data-dir", str(data_dir), *settings]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["teacher"]) == {"1", "2"} and result["toy2d"]["distribution"] == "two_moons"
    assert result["classifier"]["test_accuracy"] >= 0.95
    work = tmp_path / "diffusion_bench"
    assert (work / "teacher_digits" / "config.yaml").is_file() and (work / "teacher_two_moons").is_dir()

    def no_training(*args, **kwargs):
        raise AssertionError("a teacher was trained again")

    monkeypatch.setattr("jdistill.train.run_teacher_student", no_training)
    again = tmp_path / "again.json"
    argv = ["bench", "diffusion", "--json", str(again), "--toy-teacher", str(work / "teacher_two_moons"), *settings]
    assert main([*argv, "--work-dir", str(work), "--data-dir", str(data_dir), "--toy", "8gaussians"]) == 0
    assert json.loads(again.read_text())["toy2d"]["distribution"] == "two_moons"  # the run's own distribution

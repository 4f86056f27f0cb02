"""Teacher objectives and the diffusion recipes: EDM's weighting, flow matching's target, the exact denoiser's zero
loss, label dropout, a short run through the train step that lowers the loss and keeps an EMA that
`load_denoiser` returns and the stage's evaluation scores, and the recipes' one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.diffusion import objectives
from jdistill.diffusion.schedules import EDM, VP, RectifiedFlow
from jdistill.errors import ConfigError, RunDirError


def _arrays(shape=(5, 4)):
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(jax.random.normal(key, shape) for key in keys)


def test_edm_loss_is_lambda_weighted_and_equals_unit_weight_on_the_raw_output():
    edm = EDM()
    x0, eps, raw = _arrays()
    sigma = jnp.array([0.01, 0.3, 1.0, 5.0, 60.0])
    x = edm.add_noise(x0, eps, sigma)
    denoised = edm.to_x0(x, sigma, raw)
    loss = objectives.edm_loss(denoised, x0, sigma, 0.5)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(loss, weight * jnp.mean((denoised - x0) ** 2, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(loss, jnp.mean((raw - edm.raw_target(x0, eps, sigma)) ** 2, axis=-1), rtol=2e-3)


def test_flow_matching_regresses_the_velocity_eps_minus_x0():
    x0, eps, velocity = _arrays()
    expected = np.mean((velocity - eps + x0) ** 2, -1)
    np.testing.assert_allclose(objectives.flow_matching_loss(velocity, x0, eps), expected, rtol=1e-6)
    assert float(jnp.abs(objectives.flow_matching_loss(eps - x0, x0, eps)).max()) == 0.0


class ExactModel:
    """The exact denoiser of a one-point data distribution at `point`: its raw output makes x0 = point."""

    null_label = 0

    def __init__(self, schedule, point):
        self.schedule, self.point = schedule, point

    def __call__(self, x, t, labels=None):
        x0 = jnp.broadcast_to(self.point, x.shape)
        return self.schedule.raw_target(x0, self.schedule.eps_from_x0(x, t, x0), t)


@pytest.mark.parametrize("schedule", [EDM(), VP(), RectifiedFlow()], ids=lambda s: s.name)
def test_the_exact_denoiser_has_zero_teacher_loss(schedule):
    point = jnp.array([0.5, -1.0, 0.25, 2.0])
    x0 = jnp.broadcast_to(point, (64, 4))
    loss, t = objectives.teacher_loss(schedule, ExactModel(schedule, point), x0, jax.random.key(3))
    assert loss.shape == (64,) and float(jnp.max(loss)) < 1e-6
    wrong, _ = objectives.teacher_loss(schedule, ExactModel(schedule, point + 0.1), x0, jax.random.key(3))
    assert float(jnp.mean(wrong)) > 1e-3
    assert t.shape == (64,) and bool(jnp.all(t > 0))


def test_label_dropout_replaces_labels_by_the_null_class():
    labels = jnp.arange(10000) % 10
    np.testing.assert_array_equal(objectives.drop_labels(labels, jax.random.key(0), 0.0, 10), labels)
    dropped = objectives.drop_labels(labels, jax.random.key(0), 0.1, 10)
    assert float(jnp.mean(dropped == 10)) == pytest.approx(0.1, abs=0.01)
    assert bool(jnp.all((dropped == labels) | (dropped == 10)))


TOY = [
    "student.train.steps=120",
    "student.train.batch_size=128",
    "student.train.log_every=20",
    "student.train.eval_every=120",
    "student.train.checkpoint_every=120",
    "student.train.warmup_steps=0",
    "student.model.d_model=32",
    "student.model.num_layers=1",
    "run.plot=false",
    "run.tensorboard=false",
    "run.progress=false",
]


def test_a_2d_flow_teacher_trains_through_the_step_and_loads_its_ema(tmp_path, data_dir, capsys):
    from jdistill.diffusion.load import load_denoiser
    from jdistill.eval.report import summary_table
    from jdistill.train.job import run_job

    config = load_config("diffusion_flow_2d", [*TOY, f"data.dir={data_dir}", "distill.options.ema_decay=0.9"])
    summary = run_job(config, tmp_path / "run")
    stage = summary["student_diffusion_flow"]
    assert np.isfinite(stage["denoising_loss"]) and stage["count"] == 360
    assert "denoising loss" in summary_table(summary)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    # flow matching on 8 Gaussians: 3.0 at the zero-output start (E|eps - x0|^2 / 2), down to about 2.3 in 120 steps
    assert losses[-1] < 0.85 * losses[0], losses
    teacher = load_denoiser(tmp_path / "run")
    assert teacher.step == 120 and isinstance(teacher.schedule, RectifiedFlow)
    assert float(jnp.abs(teacher.model.out.kernel[...]).sum()) > 0  # the EMA moved off the zero-initialised output
    ema_loss, online_loss = held_out_losses(config, tmp_path / "run")
    assert stage["denoising_loss"] == pytest.approx(ema_loss, rel=1e-5)  # the stage scores the EMA weights
    assert abs(online_loss - ema_loss) > 1e-3 * ema_loss, (online_loss, ema_loss)  # which are not the online ones
    points = assert_sample_cli(tmp_path / "run", tmp_path / "samples.npz", capsys)
    radius = np.linalg.norm(points, axis=-1)
    assert float(np.median(radius)) == pytest.approx(2.0, abs=0.6)  # the Gaussians sit on a circle of radius 2


def held_out_losses(config, run_dir) -> tuple[float, float]:
    """The held-out denoising loss of the run's EMA and of its online weights, scored as the stage scores."""
    from flax import nnx

    from jdistill.diffusion.load import load_denoiser
    from jdistill.recipes.registry import build_recipe
    from jdistill.train.evaluation import stage_evaluation

    losses = []
    for ema in (True, False):
        graphdef, params = nnx.split(load_denoiser(run_dir, ema=ema).model)
        eval_stats = build_recipe(config.distill).eval_stats()
        score, _, _ = stage_evaluation(config.data, config.student.model, config.run, graphdef, None, eval_stats)
        losses.append(float(score(params)["denoising_loss"]))
    return losses[0], losses[1]


def assert_sample_cli(run_dir, out, capsys):
    """`jdistill sample` writes the draws (returned); bad input is one line and exit status 2, before sampling."""
    from jdistill.cli import main

    common = ["sample", "--run-dir", str(run_dir), "--out", str(out)]
    assert main([*common, "--sampler", "flow_euler", "--nfe", "8", "--num", "512"]) == 0
    with np.load(out) as saved:
        points = saved["samples"]
        assert points.shape == (512, 2) and (saved["labels"] == -1).all()
    for extra, message in [
        (["--nfe", "0"], "nfe: expected an integer >= 1, got 0"),
        (["--sampler", "euler_a"], "unknown sampler 'euler_a'"),
        (["--guidance-scale", "2"], "the denoiser is unconditional"),
    ]:
        capsys.readouterr()
        assert main([*common, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error
    return points


def test_ema_decay_warms_up():
    from jdistill.recipes.diffusion_teacher import ema_decay_at

    assert float(ema_decay_at(1, 0.999, True)) == pytest.approx(2 / 11)
    assert float(ema_decay_at(100000, 0.999, True)) == pytest.approx(0.999)
    assert float(ema_decay_at(1, 0.999, False)) == pytest.approx(0.999)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["distill.options.data=spiral"], "data must be images or a 2-D toy"),
        (["distill.options.class_conditional=true"], "has no labels: set class_conditional: false"),
        (["distill.options.label_dropout=1.0"], "label_dropout must be in [0, 1)"),
        (["distill.options.sigma_min=0"], "sigma_min < sigma_max"),
    ],
)
def test_bad_recipe_options_are_one_line_errors(overrides, message):
    from jdistill.recipes.registry import build_recipe

    recipe = "diffusion_edm" if any("sigma" in o for o in overrides) else "diffusion_flow"
    config = load_config("diffusion_flow_2d", [f"distill.recipe={recipe}", *overrides])
    with pytest.raises(ConfigError) as info:
        build_recipe(config.distill)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_load_denoiser_refuses_runs_that_are_not_diffusion_teachers(tmp_path):
    from jdistill.configs import to_dict
    from jdistill.diffusion.load import load_denoiser
    from jdistill.train.rundir import write_config

    with pytest.raises(RunDirError, match="not a run directory"):
        load_denoiser(tmp_path)
    write_config(tmp_path, to_dict(load_config("default")))
    with pytest.raises(RunDirError, match="recipe 'kd' did not train a diffusion teacher"):
        load_denoiser(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,sampler,nfe", [("diffusion_flow", "flow_euler", 32), ("diffusion_edm", "heun", 35)])
def test_the_2d_preset_trains_a_teacher_that_samples_the_distribution(tmp_path, data_dir, recipe, sampler, nfe):
    """The full diffusion_flow_2d preset (and its EDM variant): the EMA teacher's samples are as close to fresh
    draws of the 8 Gaussians (sliced Wasserstein distance) as two fresh draws are to each other, up to 1.5x
    (measured: flow teacher 0.107 at flow_euler 32 NFE, fresh draws 0.180, standard normal noise 0.580)."""
    from jdistill.diffusion.data import toy2d
    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.metrics import sliced_wasserstein
    from jdistill.diffusion.samplers import make_sampler
    from jdistill.train.job import run_job

    overrides = [f"distill.recipe={recipe}", f"data.dir={data_dir}", "run.plot=false", "run.progress=false"]
    run_job(load_config("diffusion_flow_2d", overrides), tmp_path / "run")
    teacher = load_denoiser(tmp_path / "run")
    run, params = make_sampler(teacher.model, teacher.schedule, sampler=sampler, nfe=nfe)
    samples = run(params, teacher.schedule.prior(jax.random.key(0), (2000, 2)), None, jax.random.key(1))
    real, fresh = toy2d("8gaussians", jax.random.key(2), 2000), toy2d("8gaussians", jax.random.key(3), 2000)
    floor = sliced_wasserstein(real, fresh)
    distance = sliced_wasserstein(real, samples)
    assert distance < 1.5 * floor, (distance, floor)

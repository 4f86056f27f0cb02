"""Teacher objectives and the diffusion recipes: EDM's weighting, flow matching's target, the exact denoiser's zero
loss, label dropout, a short run through the train step that lowers the loss and keeps an EMA that
`load_denoiser` returns, and the recipes' one-line errors."""

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


def test_a_2d_flow_teacher_trains_through_the_step_and_loads_its_ema(tmp_path, data_dir):
    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.samplers import make_sampler
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
    ema = load_denoiser(tmp_path / "run")
    online = load_denoiser(tmp_path / "run", ema=False)
    assert ema.step == 120 and isinstance(ema.schedule, RectifiedFlow)
    ema_out, online_out = (float(jnp.abs(m.model.out.kernel[...]).sum()) for m in (ema, online))
    assert ema_out != online_out and ema_out > 0  # the EMA trails the online weights
    run, params = make_sampler(ema.model, ema.schedule, sampler="flow_euler", nfe=8)
    points = run(params, ema.schedule.prior(jax.random.key(0), (512, 2)), None, jax.random.key(1))
    radius = jnp.linalg.norm(points, axis=-1)
    assert float(jnp.median(radius)) == pytest.approx(2.0, abs=0.6)  # the Gaussians sit on a circle of radius 2


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

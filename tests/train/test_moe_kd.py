"""Distillation with mixture-of-experts models: the moe_kd preset end to end at a tiny size (MoE teacher trained,
then its MoE forward inside the dense student's KD step), a MoE student's router losses added with their
coefficients and logged, a MoE teacher's losses never added, and the one-line errors of the router options."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig, Transformer
from jdistill.nn.moe import MoE
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.train import job
from jdistill.train.restore import load_stage

TINY = [
    *[
        f"{stage}.{key}"
        for stage in ("teacher", "student")
        for key in (
            "model.d_model=16",
            "model.num_layers=1",
            "model.mlp_dim=32",
            "train.steps=2",
            "train.warmup_steps=1",
            "train.eval_every=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "train.batch_size=4",
        )
    ],
    "teacher.model.num_experts=4",
    "teacher.model.moe_mlp_dim=16",
    "data.seq_len=32",
    "data.eval_batch_size=4",
    "data.eval_max_batches=1",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
    "run.baseline=false",
    "run.sample_tokens=0",
]
# The MoE student variant of the preset's header.
MOE_STUDENT = [
    "student.model.num_experts=4",
    "student.model.experts_per_token=2",
    "student.model.moe_mlp_dim=128",
    "distill.options.router_aux_loss_coef=0.01",
    "distill.options.router_z_loss_coef=0.001",
]
LAYER = dict(kind="lm", d_model=16, num_heads=2, mlp_dim=32, vocab_size=32, max_seq_len=8)
LAYER |= dict(mlp="glu", activation="silu", mlp_bias=False, num_layers=2, moe_mlp_dim=16)


# a whole job (two stages, ~20 s on a quiet 2-core machine): slow; the loss tests below run by default
@pytest.mark.slow
def test_moe_kd_preset_trains_a_moe_teacher_then_distils_it(tmp_path, data_dir):
    summary = job.run_job(load_config("moe_kd", TINY), tmp_path / "run")
    assert [name for name in summary if isinstance(summary[name], dict)] == ["teacher", "student_kd"]
    for stage in ("teacher", "student_kd"):
        assert math.isfinite(summary[stage]["bits_per_byte"]), stage
    teacher, config = load_stage(tmp_path / "run", "teacher")
    assert isinstance(teacher.blocks[0].mlp, MoE) and config.teacher.model.num_experts == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    student = [r for r in records if r["stage"] == "student_kd" and r["split"] == "train"]
    assert student and not any(key.startswith("moe_") for key in student[0])  # a dense student: no router losses


def test_the_preset_s_moe_student_variant_passes_the_recipe_checks():
    config = load_config("moe_kd", MOE_STUDENT)
    recipe = job.build_recipe(config.distill)
    recipe.check(config)
    assert (recipe.router_aux_loss_coef, recipe.router_z_loss_coef) == (0.01, 0.001)


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, (2, 9))
    return {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]), "mask": jnp.ones((2, 8))}


def _split(config, seed):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def test_a_moe_student_pays_its_router_losses_a_moe_teacher_does_not():
    (graphdef, params), (teacher_graphdef, teacher_params) = (
        _split(ModelConfig(**LAYER, num_experts=4), 0),
        _split(ModelConfig(**LAYER, num_experts=4, experts_per_token=1), 1),
    )
    batch = _batch()
    recipe = KnowledgeDistillation(temperature=2.0, label_weight=0.5, router_aux_loss_coef=0.3, router_z_loss_coef=0.05)

    @jax.jit
    def losses(params, teacher_params):
        student, teacher = nnx.merge(graphdef, params), nnx.merge(teacher_graphdef, teacher_params)
        (total, count), metrics, _ = recipe.loss(student, teacher, (), batch, None)
        out = student(batch["inputs"])
        (logits_only, _), _ = recipe.loss_from_logits(
            out.logits, teacher(batch["inputs"]).logits, batch["targets"], batch["mask"]
        )
        return total, count, metrics, out.aux, logits_only

    total, count, metrics, aux, logits_only = losses(params, teacher_params)
    assert float(metrics["moe_load_balancing_loss"]) == pytest.approx(float(aux["moe_load_balancing_loss"]))
    assert float(metrics["moe_router_z_loss"]) == pytest.approx(float(aux["moe_router_z_loss"]))
    assert float(metrics["moe_max_load"]) >= 1.0
    # the student's router losses once per token on top of D and CE; nothing of the teacher's
    router = 0.3 * aux["moe_load_balancing_loss"] + 0.05 * aux["moe_router_z_loss"]
    assert float(total - logits_only) == pytest.approx(float(count * router), rel=1e-4)
    assert float(count * router) > 1e-3 * float(total)


def test_the_router_loss_trains_the_router():
    (graphdef, params), (teacher_graphdef, teacher_params) = (
        _split(ModelConfig(**LAYER, num_experts=4), 0),
        _split(ModelConfig(**LAYER), 1),
    )
    batch = _batch()

    @jax.jit
    def router_grads(params, teacher_params):
        teacher = nnx.merge(teacher_graphdef, teacher_params)

        def grad(recipe):
            def loss(params):
                (total, count), _, _ = recipe.loss(nnx.merge(graphdef, params), teacher, (), batch, None)
                return total / count

            return jax.grad(loss)(params)["blocks"][0]["mlp"]["router"].get_value()

        off = dict(distill_weight=0.0, label_weight=0.0)
        return grad(KnowledgeDistillation(**off)), grad(KnowledgeDistillation(**off, router_aux_loss_coef=1.0))

    base, balanced = router_grads(params, teacher_params)
    assert float(jnp.abs(base).max()) == 0.0 and float(jnp.abs(balanced).max()) > 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["distill.options.router_aux_loss_coef=0.01"], "router_aux_loss_coef: the student has no mixture-of-experts"),
        ([*MOE_STUDENT[:3], "distill.options.router_z_loss_coef=-1"], "router_z_loss_coef: expected a number >= 0"),
    ],
)
def test_router_options_are_checked_in_one_line(overrides, message):
    config = load_config("moe_kd", overrides)
    with pytest.raises(ConfigError, match=message):
        job.build_recipe(config.distill).check(config)

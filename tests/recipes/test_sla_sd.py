"""SLA+SD recipe: M = 1 gives agg == logits, the rotations, the joint/single layout against separate forward
passes, evaluation on the original classes, and the preset end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.losses import cross_entropy, sla_joint_labels, sla_self_distillation_loss
from jdistill.recipes.sla_sd import SLASelfDistillation, SLAStudent, rotations
from jdistill.train.job import run_job
from tests.recipes.ssl_robust_helpers import CONFIG, FAST, batch, tiny_job

DATA = batch()


def _student(m):
    return SLASelfDistillation(n_transforms=m).wraps_student()(CONFIG, nnx.Rngs(params=0))


def test_one_transform_gives_aggregated_equal_to_the_joint_logits():
    student = _student(1)
    x = jnp.asarray(DATA["inputs"])
    joint = student.backbone(x).logits
    assert joint.shape == (8, 10)
    np.testing.assert_allclose(student.aggregated_logits(x), joint, rtol=1e-6, atol=1e-6)


def test_rotations_are_quarter_turns():
    views = np.asarray(rotations(jnp.asarray(DATA["inputs"]), 4))
    for j in range(4):
        np.testing.assert_array_equal(views[j], np.rot90(DATA["inputs"], j, axes=(1, 2)))


def test_loss_matches_the_objective_on_separately_rotated_inputs():
    student = _student(4)
    assert isinstance(student, SLAStudent) and student.backbone.config.num_classes == 40
    x = jnp.asarray(DATA["inputs"])
    joint = jnp.stack([student.backbone(jnp.rot90(x, j, axes=(1, 2))).logits for j in range(4)])
    single = student(x).logits
    assert single.shape == (8, 10)  # evaluation scores the single head on the original classes
    expected = sla_self_distillation_loss(joint, single, DATA["labels"], temperature=2.0)
    loss, metrics, _ = SLASelfDistillation(temperature=2.0).loss(student, None, (), DATA, None)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 <= float(metrics["aggregated_accuracy"]) <= 1.0


def test_the_aggregate_teaches_the_single_head_but_gets_no_gradient_from_it():
    student = _student(4)
    graphdef, params = nnx.split(student)

    def distill_only(params):  # the KL part alone: joint CE and single CE removed
        model = nnx.merge(graphdef, params)
        joint, single = model.joint_and_single(jnp.asarray(DATA["inputs"]))
        labels = jnp.asarray(DATA["labels"])
        full = sla_self_distillation_loss(joint, single, labels, temperature=1.0)
        joint_ce = cross_entropy(joint, sla_joint_labels(labels[None], jnp.arange(4)[:, None], 4))
        return full - joint_ce - cross_entropy(single, labels)

    grads = jax.grad(distill_only)(params)
    assert float(jnp.abs(grads["single"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(grads["backbone"]["head"]["kernel"][...]).max()) < 1e-6


def test_sla_sd_preset_trains_the_single_and_the_joint_head(tmp_path, untrained):
    config = load_config("sla_sd", tiny_job(steps=40, extra=FAST))
    metrics = run_job(config, tmp_path / "run", progress=False)["student_sla_sd"]
    before = untrained(config)
    assert metrics["accuracy"] > before["accuracy"] + 0.15 and metrics["nll"] < before["nll"] - 0.4
    assert metrics["aggregated_accuracy"] > before["aggregated_accuracy"] + 0.08  # the joint head learns slower

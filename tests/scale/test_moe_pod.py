"""The mixture-of-experts pod config (tpu_configs/v4-32-moe.yaml: Qwen3-30B-A3B -> Qwen3-1.7B with expert
parallelism): the architecture is the released checkpoint's (parameter count, active parameters per token), the
mesh covers the slice and splits every parameter 16 ways, and (slow, libtpu) the full-depth step compiles for a
v4-32 and needs what the header says."""

import dataclasses
import importlib.util

import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.models import Transformer, count_params
from jdistill.scale import compile as aot_compile
from jdistill.scale.topologies import GiB, parse_topology
from tests.scale.test_compile import _claimed_gib

PATH = "tpu_configs/v4-32-moe.yaml"


def test_the_teacher_is_qwen3_30b_a3b_with_3b_active_parameters_per_token():
    config = load_config(PATH)
    teacher = config.teacher.model
    assert (teacher.num_experts, teacher.experts_per_token, teacher.num_moe_layers) == (128, 8, 48)
    total = count_params(nnx.eval_shape(lambda: Transformer(teacher, rngs=nnx.Rngs(0))))
    assert total == pytest.approx(30.53e9, rel=0.005)  # the released checkpoint's 30.5 B
    per_layer, head = aot_compile._model_matmul_params(teacher)
    active = teacher.num_layers * per_layer + head + teacher.d_model * teacher.vocab_size  # + the embedding rows
    assert active == pytest.approx(3.35e9, rel=0.01)  # "A3B": 3.3 B activated (router, 8 experts, attention)
    dense = aot_compile._model_matmul_params(dataclasses.replace(teacher, num_experts=0))[0]
    assert per_layer != dense  # the routed form is counted, not a dense MLP of mlp_dim


def test_the_mesh_covers_the_slice_and_splits_the_experts():
    config = load_config(PATH)
    topology = parse_topology(config.cluster.topology)
    aot_compile.check_mesh(config, topology)
    mesh = config.mesh
    assert mesh.expert > 1 and config.teacher.model.num_experts % mesh.expert == 0
    assert mesh.fsdp * mesh.expert * mesh.tensor * mesh.data == topology.num_chips == 16
    assert mesh.rules["embed"] == ["fsdp", "expert"]  # dense parameters split over both axes too
    micro_batch = config.student.train.batch_size // config.student.train.grad_accum_steps
    assert micro_batch % topology.num_chips == 0  # every chip holds whole sequences


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_the_moe_pod_config_fits_at_full_depth_as_its_header_says():
    summary = aot_compile.compile_config(PATH)
    assert summary["platform"] == "tpu" and summary["devices"] == 16 and summary["fits"]
    assert summary["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 4}
    # every parameter split 16 ways: the student with two AdamW moments (12 bytes each), the float32 teacher (4)
    expected = (12 * summary["student_params"] + 4 * summary["teacher_params"]) / 16
    assert 0.95 * expected <= summary["argument_bytes"] <= 1.2 * expected + 64 * 2**20
    claimed = _claimed_gib(PATH)
    assert claimed is None or summary["total_bytes"] / GiB == pytest.approx(claimed, rel=0.03)

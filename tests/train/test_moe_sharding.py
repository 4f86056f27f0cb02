"""Expert parallelism: a mixture-of-experts KD step (MoE teacher and MoE student, router losses on) with the experts
split over the `expert` mesh axis equals the single-device step on 8 simulated CPU devices (losses and updated
parameters; `moe_sharded_checks.py` in a subprocess, the device count being fixed when JAX starts); each device
holds only its experts between steps; with the ragged_dot form of the dispatch (slow suite) the compiled step never
gathers a whole expert weight (the tokens move, not the experts). The expert axis in the rules and shardings, and
its one-line errors.
Tolerance as tests/train/test_sharding.py: float32 sums in another order."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jdistill.configs import MeshConfig, load_config
from jdistill.errors import ConfigError
from jdistill.models import ModelConfig, Transformer
from jdistill.train import sharding

HERE = Path(__file__).parent


def _worker(*meshes: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(HERE.parent.parent))
    done = subprocess.run(
        [sys.executable, str(HERE / "moe_sharded_checks.py"), *meshes],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_equal_to_one_device(single: dict, sharded: dict, experts_per_device: int):
    assert single["devices"] == 1 and sharded["devices"] == 8
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(sharded["load_balancing"], single["load_balancing"], rtol=1e-5)
    np.testing.assert_allclose(sharded["params"], single["params"], atol=1e-5)
    assert sharded["expert_weight_spec"].startswith("P('expert'")
    assert sharded["expert_weight_shard_shape"][0] == experts_per_device


def test_expert_parallel_step_equals_one_device():
    results = _worker("single", "data2_expert4")
    assert results["single"]["expert_weight_shard_shape"] == results["single"]["expert_weight_shape"]
    _assert_equal_to_one_device(results["single"], results["data2_expert4"], experts_per_device=8 // 4)


@pytest.mark.slow
def test_expert_parallel_with_fsdp_and_tensor_axes_equals_one_device():
    results = _worker("single", "expert8", "fsdp2_tensor2_expert2", "data2_expert4_ragged_dot")
    _assert_equal_to_one_device(results["single"], results["expert8"], experts_per_device=1)
    _assert_equal_to_one_device(results["single"], results["fsdp2_tensor2_expert2"], experts_per_device=4)
    # with the ragged_dot form of the dispatch (TPU / GPU) the experts stay put and the rows move; the blocked CPU
    # form indexes the weights per block, which the partitioner serves by gathering whole expert weights
    ragged = results["data2_expert4_ragged_dot"]
    _assert_equal_to_one_device(results["single"], ragged, experts_per_device=2)
    assert ragged["expert_weight_gathers"] == 0 < results["expert8"]["expert_weight_gathers"]


MOE = ModelConfig(
    kind="lm",
    num_layers=1,
    d_model=16,
    num_heads=2,
    mlp_dim=32,
    vocab_size=32,
    max_seq_len=8,
    mlp="glu",
    activation="silu",
    mlp_bias=False,
    num_experts=4,
    moe_mlp_dim=8,
)


def test_expert_weights_follow_the_expert_rule():
    params = nnx.state(nnx.eval_shape(lambda: Transformer(MOE, rngs=nnx.Rngs(0))), nnx.Param)
    mesh = AbstractMesh((1, 2, 2, 2), sharding.MESH_AXES)
    specs = sharding.param_shardings(params, mesh, sharding.resolve_rules())
    mlp = specs["blocks"][0]["mlp"]
    assert mlp["w_up"].get_value().spec == P("expert", "fsdp", "tensor")
    assert mlp["w_down"].get_value().spec == P("expert", "tensor", "fsdp")
    assert mlp["router"].get_value().spec == P("fsdp", None)
    # the dense parameters are split over the expert axis too when the rules say so (the pod config's rule)
    wide = sharding.param_shardings(params, mesh, sharding.resolve_rules({"embed": ["fsdp", "expert"]}))
    assert wide["blocks"][0]["attention"]["output"]["kernel"].get_value().spec == P("tensor", ("fsdp", "expert"))
    assert wide["blocks"][0]["mlp"]["w_up"].get_value().spec == P("expert", "fsdp", "tensor")


def test_the_batch_is_split_over_the_expert_axis():
    mesh = AbstractMesh((2, 1, 1, 4), sharding.MESH_AXES)
    spec = sharding.batch_shardings({"inputs": np.zeros((8, 4), np.int32)}, mesh, sharding.resolve_rules())
    assert spec["inputs"].spec == P(("data", "fsdp", "expert"), None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mesh.expert=3"], r"teacher\.model\.num_experts expected a multiple of mesh\.expert=3"),
        (["mesh.expert=16", "student.model.num_experts=4"], r"teacher\.model\.num_experts expected a multiple"),
        (["student.model.num_experts=6", "mesh.expert=4"], r"student\.model\.num_experts expected a multiple"),
        (["mesh.expert=0"], r"mesh\.expert expected a positive integer"),
    ],
)
def test_an_expert_count_the_axis_does_not_divide_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("moe_kd", overrides)


def test_a_dense_job_may_use_the_expert_axis_as_data_parallelism():
    assert load_config("lm_kd", ["mesh.expert=3"]).mesh.expert == 3


def test_an_expert_axis_larger_than_the_devices_is_a_mesh_error():
    with pytest.raises(sharding.MeshError, match=r"data\*fsdp\*tensor\*expert = 1\*1\*1\*2 = 2, but there are 1"):
        sharding.make_mesh(MeshConfig(data=1, expert=2))

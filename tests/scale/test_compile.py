"""`jdistill compile`: every config in tpu_configs/ compiles ahead of time for its own topology on this CPU host
(libtpu, in a subprocess) and fits its chips' HBM; GPU configs are decided with the TPU compile of the same step;
the topology table; the model-FLOPs formula against XLA's count.

Compile time: a full-depth 8B teacher takes 3-15 minutes to compile here, so the default test compiles v4-8 at
one teacher and one student layer (width, sequence, batch, mesh and sharding kept; per-chip parameter memory is
checked against the sharded parameter count, so a lost sharding fails). The memory each config's header claims is
checked at FULL depth by the slow tests (`pytest -m slow tests/scale`).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import ConfigError
from jdistill.models import Transformer
from jdistill.models.config import ModelConfig
from jdistill.scale import compile as aot_compile
from jdistill.scale.topologies import GiB, parse_topology

SHALLOW = ["teacher.model.num_layers=1", "student.model.num_layers=1"]  # width and sharding kept
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
TPU_NAMES = ("v4-8", "v4-32", "v5e-16", "v5e-256", "v5p-128", "2x-v5e-256")
GPU_NAMES = ("h100-1x8", "h100-4x8")
HERE = Path(__file__).resolve().parent
# "Full depth, compiled by `jdistill compile` (...): 10.82 GiB per chip" in each config's header.
CLAIM = re.compile(r"Full depth, compiled by `jdistill compile`[^:]*: ([0-9.]+) GiB per")

# The default test also switches to the fused Pallas TPU attention kernel: it compiles on a sharded mesh because
# `gated_attention` runs it per shard under `jax.shard_map`.
PALLAS = ["teacher.model.attention_impl=pallas_tpu", "student.model.attention_impl=pallas_tpu"]


def _check_compiled_step(summary, config, topology):
    assert summary["platform"] == "tpu" and summary["devices"] == topology.num_chips
    assert summary["mesh"] == {
        "data": config.mesh.data * config.mesh.dcn_data,
        "fsdp": config.mesh.fsdp,
        "tensor": config.mesh.tensor,
        "expert": config.mesh.expert,
    }
    assert summary["fits"] and summary["total_bytes"] <= topology.chip.hbm_bytes
    # Arguments: student parameters + two AdamW moments (12 bytes each) and the float32 teacher (4 bytes), split
    # over fsdp x tensor; plus the batch and a few replicated scalars and norms.
    shards = config.mesh.fsdp * config.mesh.tensor
    expected = (12 * summary["student_params"] + 4 * summary["teacher_params"]) / shards
    assert 0.95 * expected <= summary["argument_bytes"] <= 1.2 * expected + 64 * 2**20
    assert summary["temp_bytes"] > 0 and summary["alias_bytes"] > 0.9 * summary["output_bytes"] - 2**20
    assert summary["step_seconds_at_50_mfu"] == pytest.approx(2 * summary["step_seconds_at_100_mfu"])


# the slow suite compiles every pod config at full depth; by default the Pallas TPU kernel's own AOT compile
# (tests/kernels/test_pallas_tpu.py) and tests/scale/test_stage_aot.py cover the path
@pytest.mark.slow
@needs_libtpu
def test_v4_8_compiles_for_its_topology_with_the_pallas_kernel():
    path = "tpu_configs/v4-8.yaml"
    overrides = SHALLOW + PALLAS
    summary = aot_compile.compile_config(path, overrides)
    config = load_config(path, overrides)
    _check_compiled_step(summary, config, parse_topology(config.cluster.topology, config.cluster.num_slices))


def _claimed_gib(path: str) -> float | None:
    """The header's full-depth figure, or None where it says plainly that it has not been compiled yet."""
    text = Path(path).read_text()
    claims = CLAIM.findall(text)
    if not claims and "# Full depth: not compiled yet" in text:
        return None
    assert len(claims) == 1, f"{path}: the header must state its full-depth compiled memory once"
    return float(claims[0])


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("name", TPU_NAMES)
def test_tpu_config_fits_at_full_depth_as_its_header_says(name):
    path = f"tpu_configs/{name}.yaml"
    summary = aot_compile.compile_config(path)
    config = load_config(path)
    _check_compiled_step(summary, config, parse_topology(config.cluster.topology, config.cluster.num_slices))
    claimed = _claimed_gib(path)
    assert claimed is None or summary["total_bytes"] / GiB == pytest.approx(claimed, rel=0.03)


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("name", GPU_NAMES)
def test_gpu_config_fits_at_full_depth_by_the_tpu_compile_of_its_step(name):
    path = f"tpu_configs/{name}.yaml"
    summary = aot_compile.compile_config(path)
    assert summary["estimate"] and summary["platform"] == "cpu" and "error" not in summary["tpu_check"]
    assert summary["fits"] and summary["decision_bytes"] <= 0.75 * summary["hbm_bytes"]  # JAX's preallocation
    claimed = _claimed_gib(path)
    assert claimed is None or summary["decision_bytes"] / GiB == pytest.approx(claimed, rel=0.03)
    assert summary["cpu_over_tpu"] > 1.0  # XLA:CPU overstates; the header and docs say by how much


def test_every_config_states_its_full_depth_memory_and_no_extrapolated_bound():
    for name in TPU_NAMES + GPU_NAMES:
        text = Path(f"tpu_configs/{name}.yaml").read_text()
        claimed = _claimed_gib(f"tpu_configs/{name}.yaml")
        assert claimed is None or claimed > 0
        assert "upper bound" not in text and "extrapolated" not in text.lower(), name


def test_chunked_loss_keeps_the_batch_split_over_devices():
    """On 8 devices with the batch split, each device computes only its rows' logits: per-device temporaries of the
    chunked KD loss and its gradient are ~1/8 of one device's (chunks of the flattened tokens put the scanned
    axis on the batch shards, so every device gathered all hidden states: 1/2)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(HERE.parents[1]))
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    done = subprocess.run(
        [sys.executable, str(HERE / "chunked_sharded_check.py")], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["sharded"] < 0.25 * result["single"]


@pytest.mark.parametrize(
    "text, chips, grid, hosts, accelerator, hbm_gib",
    [
        ("v4-8", 4, (2, 2, 1), 1, "v4-8", 32),
        ("v4-32", 16, (2, 2, 4), 4, "v4-32", 32),
        ("v5e-16", 16, (4, 4), 4, "v5litepod-16", 16),
        ("v5litepod-256", 256, (16, 16), 64, "v5litepod-256", 16),
        ("v5p-128", 64, (4, 4, 4), 16, "v5p-128", 95),
        ("v5e:4x4", 16, (4, 4), 4, "v5litepod-16", 16),
        ("h100:4x8", 32, (4, 8), 4, None, 80),
    ],
)
def test_topology_names(text, chips, grid, hosts, accelerator, hbm_gib):
    topology = parse_topology(text)
    assert (topology.num_chips, topology.grid, topology.num_hosts) == (chips, grid, hosts)
    assert topology.chip.hbm_bytes == hbm_gib * GiB
    if accelerator:
        assert topology.accelerator_type == accelerator
    two = parse_topology(text, num_slices=2)
    assert (two.num_chips, two.num_hosts) == (2 * chips, 2 * hosts)


@pytest.mark.parametrize("text", ["v4-7", "v9-8", "v5e-24", "h100:1x2x3", "tpu"])
def test_bad_topology_is_a_config_error(text):
    with pytest.raises(ConfigError, match=r"cluster\.topology"):
        parse_topology(text)


def test_model_flops_match_xla_count_of_a_forward_pass():
    config = ModelConfig(
        kind="lm",
        num_layers=2,
        d_model=64,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=256,
        mlp="glu",
        activation="silu",
        mlp_bias=False,
        gate="headwise",
        vocab_size=512,
        max_seq_len=64,
        attention_impl="xla",
    )
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    tokens = jnp.zeros((2, 64), jnp.int32)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x).logits)
    cost = forward.lower(params, tokens).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    model = aot_compile.forward_flops_per_token(config, 64) * tokens.size
    assert model <= xla <= 1.1 * model  # XLA also counts norms, softmax and activations


def test_not_fitting_in_hbm_exits_non_zero(monkeypatch, capsys, tmp_path):
    fake = {
        "argument_bytes": 10 * GiB,
        "output_bytes": GiB,
        "alias_bytes": GiB,
        "temp_bytes": 20 * GiB,
        "code_bytes": 0,
        "total_bytes": 30 * GiB,
        "student_params": 10**9,
        "teacher_params": 8 * 10**9,
        "flops_per_device": 1.0,
        "bytes_accessed_per_device": 1.0,
        "mesh": {"data": 1, "fsdp": 16, "tensor": 1},
        "devices": 16,
        "platform": "tpu",
        "device_kind": "TPU v5 lite",
        "compile_seconds": 1.0,
    }
    monkeypatch.setattr(aot_compile, "run_aot", lambda jobs, topology: [dict(fake)])
    args = SimpleNamespace(
        config="tpu_configs/v5e-16.yaml", topology=None, json=str(tmp_path / "c.json"), overrides=SHALLOW
    )
    with pytest.raises(aot_compile.CompileError, match="more than the 16 GiB HBM"):
        aot_compile.cmd_compile(args)
    printed = capsys.readouterr().out
    assert "depth overridden (teacher 28 -> 1, student 16 -> 1)" in printed
    assert (tmp_path / "c.json").exists()
    args.topology = "v5p-32"  # the same program on 16 v5p chips (95 GiB each) fits
    assert aot_compile.cmd_compile(args) == 0


def _gpu_report(total_gib, platform):
    return {
        "argument_bytes": GiB,
        "output_bytes": GiB // 2,
        "alias_bytes": GiB // 2,
        "temp_bytes": int((total_gib - 1) * GiB),
        "code_bytes": 0,
        "total_bytes": int(total_gib * GiB),
        "student_params": 10**9,
        "teacher_params": 8 * 10**9,
        "flops_per_device": 1.0,
        "bytes_accessed_per_device": 1.0,
        "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
        "devices": 8,
        "platform": platform,
        "device_kind": platform,
        "compile_seconds": 1.0,
    }


@needs_libtpu
@pytest.mark.parametrize("tpu_gib, fits", [(40.0, True), (90.0, False)])
def test_a_gpu_config_is_decided_with_the_tpu_compile_of_the_same_step(monkeypatch, capsys, tpu_gib, fits):
    seen = []

    def fake_run_aot(jobs, topology):
        seen.append((topology.platform, topology.num_chips, jobs[0]["topology"]))
        return [_gpu_report(120.0, "cpu") if topology.platform == "gpu" else _gpu_report(tpu_gib, "tpu")]

    monkeypatch.setattr(aot_compile, "run_aot", fake_run_aot)
    args = SimpleNamespace(config="tpu_configs/h100-1x8.yaml", topology=None, json=None, overrides=[])
    if fits:
        assert aot_compile.cmd_compile(args) == 0
    else:
        with pytest.raises(aot_compile.CompileError, match=r"needs 90.00 GiB .*decided with the TPU compile"):
            aot_compile.cmd_compile(args)
    assert seen == [("gpu", 8, "h100:1x8"), ("tpu", 8, "v5p-16")]  # as many v5p chips, same config and mesh
    printed = capsys.readouterr().out
    assert f"{tpu_gib:.2f} GiB per chip" in printed and f"XLA:CPU / TPU = {120 / tpu_gib:.2f}" in printed
    assert ("decided with the TPU figure: fits" in printed) == fits


def test_proxy_topology_has_as_many_chips():
    four_nodes = parse_topology("h100:4x8")
    proxy = aot_compile.proxy_topology(four_nodes)
    if importlib.util.find_spec("libtpu") is None:
        assert proxy is None
        return
    assert (proxy.platform, proxy.num_chips, proxy.chip.generation) == ("tpu", 32, "v5p")
    assert aot_compile.proxy_topology(parse_topology("v4-8")) is None


def test_extrapolate_compiles_two_depths_and_grows_linearly(monkeypatch, capsys):
    base = {
        "argument_bytes": GiB,
        "output_bytes": GiB // 2,
        "alias_bytes": GiB // 2,
        "temp_bytes": 3 * GiB,
        "code_bytes": 0,
        "total_bytes": 4 * GiB,
        "student_params": 3 * 10**8,
        "teacher_params": 10**9,
        "flops_per_device": 1e12,
        "bytes_accessed_per_device": 1e10,
        "mesh": {"data": 1, "fsdp": 16, "tensor": 1},
        "devices": 16,
        "platform": "tpu",
        "device_kind": "TPU v5 lite",
        "compile_seconds": 1.0,
    }
    grow = {
        "argument_bytes": GiB // 8,
        "total_bytes": GiB // 4,
        "temp_bytes": GiB // 8,
        "teacher_params": 10**8,
        "student_params": 5 * 10**7,
    }
    seen = []

    def fake_run_aot(jobs, topology):
        seen.extend(job["overrides"][-2:] for job in jobs)
        return [dict(base), dict(base, **{key: base[key] + value for key, value in grow.items()})]

    monkeypatch.setattr(aot_compile, "run_aot", fake_run_aot)
    args = SimpleNamespace(config="tpu_configs/v5e-16.yaml", topology=None, json=None, overrides=[], extrapolate=True)
    assert aot_compile.cmd_compile(args) == 0
    assert seen == [[f"teacher.model.num_layers={d}", f"student.model.num_layers={d}"] for d in (1, 2)]
    summary = aot_compile.compile_extrapolated("tpu_configs/v5e-16.yaml")
    layers = 28  # the teacher, the deeper of the two (student: 16)
    assert summary["total_bytes"] == 4 * GiB + (layers - 1) * GiB // 4
    assert summary["teacher_params"] == 10**9 + (layers - 1) * 10**8
    assert summary["student_params"] == 3 * 10**8 + (16 - 1) * 5 * 10**7  # per model, not per layer pair
    assert "EXTRAPOLATED" in capsys.readouterr().out


def test_a_mesh_that_does_not_cover_the_topology_is_a_config_error():
    with pytest.raises(ConfigError, match="mesh: data\\*fsdp\\*tensor\\*expert\\*dcn_data = 16, but v5p-128"):
        aot_compile.compile_config("tpu_configs/v5e-16.yaml", topology_name="v5p-128")
    with pytest.raises(ConfigError, match=r"mesh\.dcn_data"):
        aot_compile.compile_config("tpu_configs/v5e-256.yaml", ["cluster.num_slices=2"])

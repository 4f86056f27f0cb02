"""Every pod config trains: its own pipeline (tokenizer kind, tokenised data, packing, checkpoints, vocabulary
policy, recipe and options, mesh axes, grad accumulation, dtype, remat) at toy size on 8 simulated CPU devices for
3 real steps, ending with its `run.export` loaded back (`pod_configs_worker.py` says what is scaled and how).

What compiles (`jdistill compile`, test_compile.py) is what runs: the same configs, through `jdistill train`'s own
code. The default suite runs two configs that between them cover both checkpoint families, a padded vocabulary,
label CE beside KD, FSDP alone and data x fsdp x tensor; the `slow` test runs all eight in one process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jdistill.configs import load_config
from tests.scale.pod_meshes import MESHES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(path.stem for path in (ROOT / "tpu_configs").glob("*.yaml"))
QUICK = ["v4-8", "v5p-128"]  # Qwen3 (301 of 320 rows, fsdp 4) and Llama (data x fsdp x tensor, label CE, remat dots)


def worker_results(names: list[str], work: Path) -> dict[str, dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scale" / "pod_configs_worker.py"), str(work), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {line["name"]: line for line in lines}


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    return worker_results(QUICK, tmp_path_factory.mktemp("pods"))


def check_trained(name: str, result: dict) -> None:
    config = load_config(str(ROOT / "tpu_configs" / f"{name}.yaml"))
    qwen = config.student.model.qk_norm
    assert len(result["losses"]) == 3 and all(math.isfinite(loss) for loss in result["losses"]), result["losses"]
    assert math.isfinite(result["eval_nll"]) and math.isfinite(result["teacher_nll"])
    assert result["params_moved"] > 1e-5  # the student trained (its exported weights left the init checkpoint's)
    assert result["logits_scale"] > 0.1
    assert result["export_logits_max_diff"] <= 1e-6  # the exported checkpoint is the trained state
    assert result["architecture"] == ("Qwen3ForCausalLM" if qwen else "LlamaForCausalLM")
    assert result["tie_word_embeddings"] == config.student.model.tie_embeddings
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= set(result["exported_files"])
    assert result["real_vocab"] == ([301, 301] if qwen else [320, 320])  # distill.vocab shared: the tokenizer's ids
    assert result["grad_accum_steps"] == config.student.train.grad_accum_steps > 1


def test_every_config_has_a_scaled_mesh_keeping_its_axes():
    assert sorted(MESHES) == CONFIGS  # a new pod config needs its scaled mesh here
    for name, scaled in MESHES.items():
        mesh = load_config(str(ROOT / "tpu_configs" / f"{name}.yaml")).mesh
        assert math.prod(scaled.values()) <= 8, name
        for axis, size in scaled.items():
            kept = size > 1 or getattr(mesh, axis) == 1 or (name, axis) == ("2x-v5e-256", "data")
            assert kept, (name, axis)


@pytest.mark.parametrize("name", QUICK)
def test_pod_config_trains_three_steps_and_exports(quick, name):
    check_trained(name, quick[name])


@pytest.mark.slow
def test_every_pod_config_trains_three_steps_and_exports(tmp_path, data_dir):
    results = worker_results(CONFIGS, tmp_path)
    assert sorted(results) == CONFIGS
    for name in CONFIGS:
        check_trained(name, results[name])

"""Mixture-of-experts checkpoints (Qwen3-MoE, Qwen3-Next with MoE): parity with transformers on the committed
fixtures, both expert layouts, round trips, one-line errors."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jdistill.hf import HFImportError, from_pretrained, save_pretrained
from jdistill.hf.config import hf_config_from_model, model_config_from_hf
from jdistill.hf.prune import prune_layers
from jdistill.models.config import ModelConfig
from jdistill.models.generate import generate
from jdistill.nn.moe import MoE

FIXTURES = Path(__file__).parent / "fixtures"
MOE_FIXTURES = ["qwen3_moe", "qwen3_next_moe"]  # released per-expert layout / transformers' packed layout
EXPECTED_FIELDS = {
    "qwen3_moe": dict(
        num_experts=8, experts_per_token=2, moe_mlp_dim=16, shared_expert_dim=0, norm_topk_prob=True, moe_every=1
    ),
    "qwen3_next_moe": dict(
        num_experts=8, experts_per_token=2, moe_mlp_dim=16, shared_expert_dim=24, norm_topk_prob=False, moe_every=2
    ),
}
MOE_BLOCKS = {"qwen3_moe": [False, True, True], "qwen3_next_moe": [False, True, False, True]}


@nnx.jit
def _logits(model, tokens):  # one compiled forward (an eager one compiles every operation separately)
    return model(tokens).logits


def _expected(name):
    return load_file(str(FIXTURES / name / "expected.safetensors"))


@pytest.fixture(scope="module", params=MOE_FIXTURES)
def loaded(request):
    return request.param, from_pretrained(FIXTURES / request.param)


def test_config_and_logits_match_transformers(loaded):
    name, model = loaded
    config = model.config
    assert {field: getattr(config, field) for field in EXPECTED_FIELDS[name]} == EXPECTED_FIELDS[name]
    assert [isinstance(block.mlp, MoE) for block in model.blocks] == MOE_BLOCKS[name]
    data = _expected(name)
    logits = np.asarray(_logits(model, data["input_ids"]))
    assert np.abs(logits).max() > 1.0
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "name",
    [
        "qwen3_moe",
        pytest.param("qwen3_next_moe", marks=pytest.mark.slow),
    ],  # Qwen3-Next's decode: tests/hf/test_generate.py
)
def test_greedy_generation_matches_transformers(name):
    model = from_pretrained(FIXTURES / name)
    data = _expected(name)
    prompts, prompt_len = data["input_ids"], data["input_ids"].shape[1]
    new_tokens = data["greedy"].shape[1] - prompt_len
    np.testing.assert_array_equal(generate(model, prompts, max_new_tokens=new_tokens), data["greedy"][:, prompt_len:])


def _unpacked(name):
    """The fixture's tensors in the released per-expert layout (the packed ones split with numpy)."""
    tensors = load_file(str(FIXTURES / name / "model.safetensors"))
    for key in [k for k in tensors if k.endswith("experts.gate_up_proj")]:
        prefix = key.removesuffix("gate_up_proj")
        gate_up, down = tensors.pop(key), tensors.pop(prefix + "down_proj")
        f = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            tensors[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :f]
            tensors[f"{prefix}{e}.up_proj.weight"] = gate_up[e, f:]
            tensors[f"{prefix}{e}.down_proj.weight"] = down[e]
    return tensors


def test_save_writes_the_released_layout_and_loads_back(loaded, tmp_path):
    name, model = loaded
    save_pretrained(model, tmp_path)
    written = load_file(str(tmp_path / "model.safetensors"))
    original = _unpacked(name)
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    config = json.loads((tmp_path / "config.json").read_text())
    source = json.loads((FIXTURES / name / "config.json").read_text())
    for key in ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step"):
        assert config[key] == source[key], key
    assert config["num_experts"] == source.get("num_experts", source.get("num_local_experts"))
    assert config["mlp_only_layers"] == source["mlp_only_layers"]
    assert from_pretrained(tmp_path).config == model.config


def test_packed_and_released_layouts_load_the_same_model(tmp_path):
    """The released Qwen3-MoE fixture packed as transformers 5 holds it in memory: same logits."""
    tensors = load_file(str(FIXTURES / "qwen3_moe" / "model.safetensors"))
    for layer in (1, 2):
        prefix = f"model.layers.{layer}.mlp.experts."
        per_expert = {p: [tensors.pop(f"{prefix}{e}.{p}.weight") for e in range(8)] for p in ("gate_proj", "up_proj")}
        tensors[prefix + "gate_up_proj"] = np.stack(
            [np.concatenate([g, u]) for g, u in zip(per_expert["gate_proj"], per_expert["up_proj"], strict=True)]
        )
        tensors[prefix + "down_proj"] = np.stack([tensors.pop(f"{prefix}{e}.down_proj.weight") for e in range(8)])
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(FIXTURES / "qwen3_moe" / "config.json", tmp_path / "config.json")
    data = _expected("qwen3_moe")
    np.testing.assert_allclose(_logits(from_pretrained(tmp_path), data["input_ids"]), data["logits"], atol=1e-4)


@pytest.mark.parametrize("name", MOE_FIXTURES)
def test_transformers_loads_what_save_pretrained_writes(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    save_pretrained(from_pretrained(FIXTURES / name), tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    data = _expected(name)
    with torch.no_grad():
        logits = theirs(torch.from_numpy(data["input_ids"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)


def _edited(tmp_path, name, change):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    config = json.loads((target / "config.json").read_text())
    change(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    "name, change, message",
    [
        (
            "qwen3_moe",
            lambda c: c.update(num_experts_per_tok=9),
            r"config\.json: num_experts_per_tok: expected an integer in \[1, num_experts=8\], got 9$",
        ),
        ("qwen3_moe", lambda c: c.pop("moe_intermediate_size"), "moe_intermediate_size: missing"),
        ("qwen3_moe", lambda c: c.update(num_experts=4), "num_local_experts: expected the same as num_experts=4"),
        ("qwen3_moe", lambda c: c.update(mlp_only_layers=[7]), r"mlp_only_layers: expected increasing 0-based"),
        ("qwen3_moe", lambda c: c.update(decoder_sparse_step=0), "decoder_sparse_step: expected a positive integer"),
        ("qwen3_moe", lambda c: c.update(norm_topk_prob="yes"), "norm_topk_prob: expected true or false"),
        (
            "qwen3_next_moe",
            lambda c: c.pop("shared_expert_intermediate_size"),
            "shared_expert_intermediate_size: missing",
        ),
        ("qwen3_next_moe", lambda c: c.update(num_experts=6), r"mlp\.gate\.weight: shape \(8, 32\) does not match"),
    ],
)
def test_bad_moe_configs_are_one_line_errors(tmp_path, name, change, message):
    with pytest.raises(HFImportError, match=message) as error:
        from_pretrained(_edited(tmp_path, name, change))
    assert "\n" not in str(error.value)


def test_an_unknown_expert_layout_is_named(tmp_path):
    target = _edited(tmp_path, "qwen3_moe", lambda c: None)
    tensors = load_file(str(target / "model.safetensors"))
    renamed = {k.replace("mlp.experts.", "mlp.block_sparse_moe.w"): v for k, v in tensors.items()}
    save_file(renamed, str(target / "model.safetensors"))
    with pytest.raises(HFImportError, match=r"model\.layers\.1\.mlp: unknown mixture-of-experts layout \(block_spa"):
        from_pretrained(target)


def test_models_transformers_has_no_moe_layout_for_are_refused(loaded):
    _, model = loaded
    config = model.config
    changes = [dict(shared_expert_dim=0 if config.shared_expert_dim else 8)]  # Qwen3-Next has one, Qwen3-MoE none
    changes += [] if config.shared_expert_dim else [dict(qk_norm=False)]  # a Llama-style MoE (Mixtral)
    for change in changes:
        with pytest.raises(HFImportError, match="written as Qwen3-MoE"):
            hf_config_from_model(dataclasses.replace(config, **change))


def test_pruning_keeps_each_blocks_mlp_kind(loaded):
    name, model = loaded
    keep = [0, 1] if name == "qwen3_moe" else [1, 2]
    pruned = prune_layers(model, keep)
    assert [isinstance(block.mlp, MoE) for block in pruned.blocks] == [MOE_BLOCKS[name][i] for i in keep]
    np.testing.assert_array_equal(
        pruned.blocks[1 if name == "qwen3_moe" else 0].mlp.w_up[...], model.blocks[1].mlp.w_up[...]
    )


@pytest.mark.parametrize("name, default", [("qwen3_moe", False), ("qwen3_next_moe", True)])
def test_absent_moe_keys_take_transformers_defaults(name, default):
    config = json.loads((FIXTURES / name / "config.json").read_text())
    for key in ("norm_topk_prob", "decoder_sparse_step", "mlp_only_layers"):
        config.pop(key)
    model_config = model_config_from_hf(config)
    assert (model_config.norm_topk_prob, model_config.moe_every, model_config.dense_layers) == (default, 1, ())
    assert model_config.num_moe_layers == model_config.num_layers


def test_init_from_reads_a_moe_checkpoint_with_the_configs_dispatch():
    from types import SimpleNamespace

    from jdistill.hf.init_from import load_init_model

    stage = SimpleNamespace(
        init_from=f"hf:{FIXTURES / 'qwen3_moe'}", model=ModelConfig(kind="lm", moe_dispatch="one_hot")
    )
    model = load_init_model(stage, "teacher")
    assert model.config.moe_dispatch == "one_hot" and model.config.num_experts == 8
    data = _expected("qwen3_moe")
    np.testing.assert_allclose(_logits(model, data["input_ids"]), data["logits"], atol=1e-4, rtol=0)

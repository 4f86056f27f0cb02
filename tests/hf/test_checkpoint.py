"""Hugging Face import/export: logit parity with transformers (committed fixtures), round trips, errors."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jdistill.hf import HFImportError, from_pretrained, save_pretrained
from jdistill.hf.config import hf_config_from_model
from jdistill.models.config import ModelConfig

FIXTURES = Path(__file__).parent / "fixtures"
ARCHITECTURES = ["llama", "qwen3", "qwen3_next"]


def expected(name):
    return load_file(str(FIXTURES / name / "expected.safetensors"))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logits_match_transformers(name):
    model = from_pretrained(FIXTURES / name)
    data = expected(name)
    logits = np.asarray(model(data["input_ids"]).logits)
    assert np.abs(logits).max() > 1.0  # the fixture's logits are far from uniform
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_then_load_is_the_identity(name, tmp_path):
    model = from_pretrained(FIXTURES / name)
    save_pretrained(model, tmp_path / "out")
    again = from_pretrained(tmp_path / "out")
    assert again.config == model.config
    params, params_again = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (model, again))
    for a, b in zip(params, params_again, strict=True):
        np.testing.assert_array_equal(a, b)
    original = load_file(str(FIXTURES / name / "model.safetensors"))
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key])


def test_sharded_checkpoint_with_index(tmp_path):
    tensors = load_file(str(FIXTURES / "llama" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(tmp_path / file))
    index = {"metadata": {}, "weight_map": {n: f for f, members in shards.items() for n in members}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(FIXTURES / "llama" / "config.json", tmp_path / "config.json")
    data = expected("llama")
    logits = np.asarray(from_pretrained(tmp_path)(data["input_ids"]).logits)
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4, rtol=0)


def test_bfloat16_compute(tmp_path):
    data = expected("qwen3")
    logits = np.asarray(from_pretrained(FIXTURES / "qwen3", dtype="bfloat16")(data["input_ids"]).logits)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, data["logits"], atol=0.25)


def _copy_fixture(tmp_path, name="llama"):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def test_missing_tensor_is_named(tmp_path):
    target = _copy_fixture(tmp_path)
    tensors = load_file(str(target / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(target / "model.safetensors"))
    with pytest.raises(HFImportError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        from_pretrained(target)


def test_moe_blocks_without_expert_tensors_are_an_unknown_layout(tmp_path):
    target = _copy_fixture(tmp_path, "qwen3_next")  # dense MLP tensors where the config now asks for experts
    config = json.loads((target / "config.json").read_text())
    config["mlp_only_layers"] = [0, 1]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFImportError, match=r"model\.layers\.2\.mlp: unknown mixture-of-experts layout"):
        from_pretrained(target)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architecture \\['GPT2LMHeadModel'\\] is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope scaling 'yarn' is not supported"),
        ({"attention_bias": True}, "attention_bias=true is not supported"),
    ],
)
def test_unsupported_configs_are_one_line_errors(tmp_path, change, message):
    target = _copy_fixture(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config.update(change)
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFImportError, match=message):
        from_pretrained(target)


def test_wrong_shape_and_missing_files(tmp_path):
    target = _copy_fixture(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["intermediate_size"] = 100
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFImportError, match="does not match the config"):
        from_pretrained(target)
    with pytest.raises(HFImportError, match="no such file"):
        from_pretrained(tmp_path / "nowhere")


LLAMA_STYLE = dict(kind="lm", mlp="glu", activation="silu", mlp_bias=False, gate="none")
QWEN3_NEXT_STYLE = dict(LLAMA_STYLE, gate="elementwise", qk_norm=True, norm_zero_centered=True, rotary_fraction=0.25)


@pytest.mark.parametrize(
    "fields, architecture",
    [
        (LLAMA_STYLE, "LlamaForCausalLM"),
        (dict(LLAMA_STYLE, qk_norm=True), "Qwen3ForCausalLM"),
        (QWEN3_NEXT_STYLE, "Qwen3NextForCausalLM"),
    ],
)
def test_exportable_configs_name_their_architecture(fields, architecture):
    assert hf_config_from_model(ModelConfig(**fields))["architectures"] == [architecture]


@pytest.mark.parametrize(
    "fields",
    [
        dict(LLAMA_STYLE, kind="classifier"),
        dict(LLAMA_STYLE, mlp="dense"),
        dict(LLAMA_STYLE, glu_order=1),
        dict(LLAMA_STYLE, activation="gelu"),
        dict(LLAMA_STYLE, mlp_bias=True),
        dict(LLAMA_STYLE, gate="headwise"),
        dict(LLAMA_STYLE, rotary_fraction=0.5),  # partial rotary only in the Qwen3-Next layout
        dict(QWEN3_NEXT_STYLE, gate_position="value"),
        dict(QWEN3_NEXT_STYLE, qk_norm=False),
        dict(QWEN3_NEXT_STYLE, norm_zero_centered=False, layer_pattern="DA"),
        dict(QWEN3_NEXT_STYLE, gate="none", layer_pattern="DA"),
    ],
)
def test_configs_transformers_cannot_load_are_refused(fields):
    with pytest.raises(HFImportError, match="save_pretrained: only"):
        hf_config_from_model(ModelConfig(**fields))


def test_llama3_rope_scaling_round_trips(tmp_path):
    from tests.hf.tiny import tiny_config, tiny_model

    model = tiny_model(tiny_config("llama", num_layers=1, head_dim=16, rope_scaling=(8.0, 1.0, 4.0, 128.0)))
    save_pretrained(model, tmp_path)
    scaling = json.loads((tmp_path / "config.json").read_text())["rope_scaling"]
    assert scaling == dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=128
    )
    loaded = from_pretrained(tmp_path)
    assert loaded.config.rope_scaling == (8.0, 1.0, 4.0, 128.0)
    tokens = np.random.default_rng(0).integers(0, 64, (2, 40)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(loaded(tokens).logits), np.asarray(model(tokens).logits), atol=1e-6)

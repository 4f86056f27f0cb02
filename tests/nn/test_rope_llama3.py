"""Llama 3 RoPE frequency scaling (`model.rope_scaling`): the three frequency bands, transformers' own frequencies,
both RoPE paths (tables and explicit positions), and a Llama 3.1-style model's logits against transformers'."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer
from jdistill.nn.rope import apply_rope, llama3_scaled, rope_frequencies

# head_dim 16, theta 5e5: wavelengths 6.3, 32.3, 167, ... against L / high = 32 and L / low = 128 (L = 128): one
# frequency kept, one blended, the rest divided by the factor.
SCALING = (8.0, 1.0, 4.0, 128.0)
THETA, DIM = 500000.0, 16


def plain(dim=DIM, theta=THETA):
    return (1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)


def test_the_three_bands():
    f = plain()
    scaled = llama3_scaled(f, SCALING)
    wavelength = 2 * np.pi / f
    assert wavelength[0] < 32 < wavelength[1] < 128 < wavelength[2]
    assert scaled[0] == f[0]  # high frequency kept
    np.testing.assert_allclose(scaled[2:], f[2:] / 8.0, rtol=1e-6)  # low frequencies slowed by the factor
    s = (128.0 / wavelength[1] - 1.0) / (4.0 - 1.0)
    np.testing.assert_allclose(scaled[1], (1 - s) * f[1] / 8.0 + s * f[1], rtol=1e-6)
    assert f[1] / 8.0 < scaled[1] < f[1]
    assert llama3_scaled(f, ()) is f


def test_transformers_computes_the_same_frequencies():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=DIM,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=THETA,
            factor=SCALING[0],
            low_freq_factor=SCALING[1],
            high_freq_factor=SCALING[2],
            original_max_position_embeddings=int(SCALING[3]),
        ),
    )
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config)
    assert attention_factor == 1.0
    np.testing.assert_allclose(np.asarray(rope_frequencies(DIM, THETA, SCALING)), theirs.numpy(), rtol=1e-6)


def test_tables_and_positions_agree_and_the_scaling_matters():
    x = np.random.default_rng(0).normal(size=(2, 40, 3, DIM)).astype(np.float32)
    positions = np.broadcast_to(np.arange(40, dtype=np.int32), (2, 40))
    tables = apply_rope(x, None, theta=THETA, scaling=SCALING)
    explicit = apply_rope(x, positions, theta=THETA, scaling=SCALING)
    np.testing.assert_allclose(np.asarray(tables), np.asarray(explicit), atol=1e-5)
    unscaled = apply_rope(x, positions, theta=THETA)
    assert np.abs(np.asarray(unscaled) - np.asarray(explicit)).max() > 0.1


def test_a_llama31_style_model_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jdistill.hf import save_pretrained

    config = ModelConfig(
        kind="lm",
        num_layers=2,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=DIM,
        mlp_dim=48,
        mlp="glu",
        activation="silu",
        mlp_bias=False,
        gate="none",
        vocab_size=64,
        max_seq_len=64,
        rope_theta=THETA,
        head_bias=False,
        rope_scaling=SCALING,
    )
    model = Transformer(config, rngs=nnx.Rngs(0))
    save_pretrained(model, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["rope_scaling"] = dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=128
    )
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = np.random.default_rng(1).integers(0, 64, (2, 48)).astype(np.int32)
    with torch.no_grad():
        theirs = loaded(torch.from_numpy(tokens).long()).logits.numpy()
    ours = np.asarray(model(tokens).logits)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    unscaled = Transformer(dataclasses.replace(config, rope_scaling=()), rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(unscaled(tokens).logits) - theirs).max() > 1e-3  # the scaling is what matches

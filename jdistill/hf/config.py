"""Hugging Face `config.json` <-> `ModelConfig` for the supported decoder architectures."""

from __future__ import annotations

from jdistill.errors import UserError
from jdistill.models.config import ModelConfig

SUPPORTED = ("LlamaForCausalLM", "Qwen3ForCausalLM")
MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}


class HFImportError(UserError):
    """A checkpoint jdistill cannot import (unsupported architecture or option, missing tensor)."""


def _rope_theta(hf: dict) -> float:
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    parameters = hf.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", 10000.0))


def _check_supported(hf: dict, source: str) -> str:
    architectures = hf.get("architectures") or []
    architecture = next((a for a in architectures if a in SUPPORTED), None)
    if architecture is None:
        raise HFImportError(f"{source}: architecture {architectures or '(none)'} is not supported "
                            f"(supported: {', '.join(SUPPORTED)})")
    scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or (hf.get("rope_parameters") or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise HFImportError(f"{source}: rope scaling {rope_type!r} is not supported (only default RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise HFImportError(f"{source}: {flag}=true is not supported")
    if hf.get("use_sliding_window"):
        raise HFImportError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFImportError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    return architecture


def model_config_from_hf(hf: dict, *, dtype: str = "float32", source: str = "config.json") -> ModelConfig:
    """The jdistill `ModelConfig` equivalent to a Llama / Qwen3 `config.json`."""
    architecture = _check_supported(hf, source)
    heads = hf["num_attention_heads"]
    return ModelConfig(
        kind="lm",
        num_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        gate="none",
        activation="silu",
        mlp="glu",
        mlp_bias=False,
        qk_norm=architecture == "Qwen3ForCausalLM",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=_rope_theta(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype,
    )


def hf_config_from_model(config: ModelConfig) -> dict:
    """A `config.json` that transformers loads as the equivalent Llama (or, with qk_norm, Qwen3) model."""
    if config.kind != "lm" or config.mlp != "glu" or config.glu_order != 2 or config.activation != "silu" \
            or config.gate != "none" or config.mlp_bias or config.rotary_fraction != 1.0:
        raise HFImportError("save_pretrained: only Llama / Qwen3-style models (lm, glu + silu, no gate, no MLP "
                            "bias, full rotary) can be written as Hugging Face checkpoints")
    architecture = "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"
    return {
        "architectures": [architecture],
        "model_type": MODEL_TYPES[architecture],
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.resolved_kv_heads,
        "head_dim": config.resolved_head_dim,
        "intermediate_size": config.mlp_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }

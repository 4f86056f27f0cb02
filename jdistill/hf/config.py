"""Hugging Face `config.json` <-> `ModelConfig` for the supported decoder architectures."""

from __future__ import annotations

from typing import Any

from jdistill.hf.config_schema import (
    MODEL_KEYS,
    HFImportError,
    check_hf_config,
    check_moe,
    check_qwen3_next,
    moe_layers,
    num_experts,
)
from jdistill.models.config import DType, ModelConfig

SUPPORTED = ("LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM")
MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen3NextForCausalLM": "qwen3_next",
}
# transformers' default of norm_topk_prob when config.json has none (Qwen3MoeConfig / Qwen3NextConfig)
NORM_TOPK_PROB_DEFAULT = {"Qwen3MoeForCausalLM": False, "Qwen3NextForCausalLM": True}
LAYER_TYPES = {"linear_attention": "D", "full_attention": "A"}

__all__ = ["SUPPORTED", "HFImportError", "hf_config_from_model", "model_config_from_hf"]


def _rope_theta(hf: dict[str, Any]) -> float:
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    parameters = hf.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", 10000.0))


def _rope_scaling_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """`rope_scaling` (transformers 4) or `rope_parameters` (5), with the type under `rope_type`."""
    fields = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if "type" in fields:
        fields.setdefault("rope_type", fields["type"])
    return fields


def _rope_scaling(hf: dict[str, Any]) -> tuple[float, ...]:
    """`ModelConfig.rope_scaling` of a Llama 3 `rope_scaling` (() for none)."""
    fields = _rope_scaling_fields(hf)
    if fields.get("rope_type") != "llama3":
        return ()
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return tuple(float(fields[key]) for key in keys)


def _rope_fraction(hf: dict[str, Any]) -> float:
    parameters = hf.get("rope_parameters") or {}
    return float(hf.get("partial_rotary_factor", parameters.get("partial_rotary_factor", 1.0)))


def _qwen3_next_fields(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """Hybrid layout, gated attention and Gated DeltaNet sizes of a Qwen3-Next config."""
    check_qwen3_next(hf, source)
    layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or []
    if len(layer_types) != layers or set(layer_types) - set(LAYER_TYPES):
        raise HFImportError(f"{source}: layer_types must list {layers} of {sorted(LAYER_TYPES)}")
    return dict(
        gate="elementwise",
        gate_position="sdpa_output",
        norm_zero_centered=True,
        layer_pattern="".join(LAYER_TYPES[t] for t in layer_types),
        linear_key_heads=hf["linear_num_key_heads"],
        linear_value_heads=hf["linear_num_value_heads"],
        linear_key_head_dim=hf["linear_key_head_dim"],
        linear_value_head_dim=hf["linear_value_head_dim"],
        linear_conv_kernel=hf["linear_conv_kernel_dim"],
    )


def _moe_fields(hf: dict[str, Any], architecture: str, source: str) -> dict[str, Any]:
    """The mixture-of-experts fields of a Qwen3-MoE / Qwen3-Next config ({} when no block is a MoE block:
    `num_experts` 0 or absent, or every layer in `mlp_only_layers`)."""
    if architecture not in NORM_TOPK_PROB_DEFAULT or not moe_layers(hf, source):
        return {}
    shared = architecture == "Qwen3NextForCausalLM"
    check_moe(hf, source, shared_expert=shared)
    return dict(
        num_experts=num_experts(hf, source),
        experts_per_token=hf["num_experts_per_tok"],
        moe_mlp_dim=hf["moe_intermediate_size"],
        shared_expert_dim=hf["shared_expert_intermediate_size"] if shared else 0,
        norm_topk_prob=hf.get("norm_topk_prob", NORM_TOPK_PROB_DEFAULT[architecture]),
        moe_every=hf.get("decoder_sparse_step") or 1,
        dense_layers=tuple(sorted(set(hf.get("mlp_only_layers") or []))),
    )


def _check_supported(hf: dict[str, Any], source: str) -> str:
    architectures = hf.get("architectures") or []
    architecture = next((a for a in architectures if a in SUPPORTED), None)
    if architecture is None:
        raise HFImportError(
            f"{source}: architecture {architectures or '(none)'} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    rope_type = _rope_scaling_fields(hf).get("rope_type")
    if rope_type not in (None, "default", "llama3"):
        raise HFImportError(f"{source}: rope scaling {rope_type!r} is not supported (only default and llama3 RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise HFImportError(f"{source}: {flag}=true is not supported")
    if hf.get("use_sliding_window"):
        raise HFImportError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFImportError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    return architecture


def model_config_from_hf(hf: dict[str, Any], *, dtype: DType = "float32", source: str = "config.json") -> ModelConfig:
    """The jdistill `ModelConfig` equivalent to a Llama / Qwen3 / Qwen3-MoE / Qwen3-Next `config.json`; a damaged or
    inconsistent file is a one-line `HFImportError` naming `source` and the key."""
    hf = check_hf_config(hf, source)
    architecture = _check_supported(hf, source)
    config = _model_config(hf, architecture, dtype, source)
    for field, expected in config.validate():
        key = MODEL_KEYS.get(field, field)
        raise HFImportError(f"{source}: {key}: expected {expected}, got {hf.get(key, getattr(config, field))!r:.60}")
    return config


def _model_config(hf: dict[str, Any], architecture: str, dtype: DType, source: str) -> ModelConfig:
    heads = hf["num_attention_heads"]
    fields: dict[str, Any] = {"gate": "none"}
    if architecture == "Qwen3NextForCausalLM":
        fields.update(_qwen3_next_fields(hf, source))
    fields.update(_moe_fields(hf, architecture, source))
    return ModelConfig(
        kind="lm",
        num_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        activation="silu",
        mlp="glu",
        mlp_bias=False,
        qk_norm=architecture != "LlamaForCausalLM",
        rotary_fraction=_rope_fraction(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=_rope_theta(hf),
        rope_scaling=_rope_scaling(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        head_bias=False,
        dtype=dtype,
        **fields,
    )


def _hf_rope_scaling(scaling: tuple[float, ...]) -> dict[str, Any]:
    if not scaling:
        return {}
    factor, low, high, original = scaling
    return {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": int(original),
        }
    }


def _hf_moe(config: ModelConfig, next_style: bool) -> dict[str, Any]:
    """The mixture-of-experts keys of `config.json` (none for a dense model)."""
    if not config.num_experts:
        return {}
    if not config.qk_norm or bool(config.shared_expert_dim) != next_style:
        raise HFImportError(
            "save_pretrained: a mixture-of-experts model is written as Qwen3-MoE (qk-norm, no shared expert) or "
            "Qwen3-Next (its layout, with a shared expert: shared_expert_dim > 0)"
        )
    keys = {
        "num_experts": config.num_experts,
        "num_experts_per_tok": config.experts_per_token,
        "moe_intermediate_size": config.resolved_moe_mlp_dim,
        "norm_topk_prob": config.norm_topk_prob,
        "decoder_sparse_step": config.moe_every,
        "mlp_only_layers": list(config.dense_layers),
    }
    if next_style:
        keys["shared_expert_intermediate_size"] = config.shared_expert_dim
    return keys


def hf_config_from_model(config: ModelConfig) -> dict[str, Any]:
    """A `config.json` that transformers loads as the equivalent Llama, Qwen3, Qwen3-MoE (experts) or (hybrid /
    gated / zero-centred norms) Qwen3-Next model."""
    next_style = config.norm_zero_centered or "D" in config.layer_pattern or config.gate != "none"
    qwen3_next_complete = config.norm_zero_centered and config.qk_norm and config.gate == "elementwise"
    exportable = (
        config.kind == "lm"
        and config.mlp == "glu"
        and config.glu_order == 2
        and config.activation == "silu"
        and not config.mlp_bias
        and config.gate_position == "sdpa_output"
        and not config.residual_gates
        and config.sliding_window is None
        and "R" not in config.layer_pattern
        and (qwen3_next_complete if next_style else config.rotary_fraction == 1.0)
    )
    if not exportable:
        raise HFImportError(
            "save_pretrained: only Llama / Qwen3 / Qwen3-Next-style models (lm, glu + silu, no MLP "
            "bias, no residual gates, sliding window or ReGLA layers; Qwen3-Next: elementwise output gate, qk-norm "
            "and zero-centred norms) can be "
            "written as Hugging Face checkpoints"
        )
    if next_style:
        architecture = "Qwen3NextForCausalLM"
    elif config.qk_norm:
        architecture = "Qwen3MoeForCausalLM" if config.num_experts else "Qwen3ForCausalLM"
    else:
        architecture = "LlamaForCausalLM"
    hf = {
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
        **_hf_rope_scaling(config.rope_scaling),
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if next_style:
        layer_names = {value: key for key, value in LAYER_TYPES.items()}
        hf.update(
            partial_rotary_factor=config.rotary_fraction,
            layer_types=[
                layer_names["D" if config.layer_type(i) == "deltanet" else "A"] for i in range(config.num_layers)
            ],
            linear_num_key_heads=config.linear_key_heads,
            linear_num_value_heads=config.linear_value_heads,
            linear_key_head_dim=config.linear_key_head_dim,
            linear_value_head_dim=config.linear_value_head_dim,
            linear_conv_kernel_dim=config.linear_conv_kernel,
            mlp_only_layers=list(range(config.num_layers)),
            num_experts=0,
            decoder_sparse_step=1,
        )
    hf.update(_hf_moe(config, next_style))
    return hf

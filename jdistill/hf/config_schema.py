"""The keys of a Hugging Face `config.json` that jdistill reads, checked before any is used: a one-line
`HFImportError` naming the file, the key and what was expected (instead of the KeyError, TypeError or
ZeroDivisionError of a damaged or hand-edited file).

`check_hf_config(hf, source)` checks types and ranges key by key; `MODEL_KEYS` maps the fields of the resulting
`ModelConfig` back to the keys they came from, so that `ModelConfig.validate`'s cross-field problems (heads that do
not divide, ...) are reported under the file's own key names.
"""

from __future__ import annotations

import math
from typing import Any

from jdistill.errors import UserError


class HFImportError(UserError):
    """A checkpoint jdistill cannot import (unsupported architecture or option, missing tensor, damaged file)."""


REQUIRED_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings")
QWEN3_NEXT_SIZES = (
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
)
POSITIVE_NUMBERS = ("rope_theta", "rms_norm_eps")
FLAGS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")
LLAMA3_ROPE = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
MODEL_KEYS = {  # ModelConfig field -> config.json key
    "num_layers": "num_hidden_layers",
    "d_model": "hidden_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "mlp_dim": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "rotary_fraction": "partial_rotary_factor",
    "rope_scaling": "rope_scaling",
    "linear_value_heads": "linear_num_value_heads",
    "layer_pattern": "layer_types",
    "num_experts": "num_experts",
    "experts_per_token": "num_experts_per_tok",
    "moe_mlp_dim": "moe_intermediate_size",
    "shared_expert_dim": "shared_expert_intermediate_size",
    "moe_every": "decoder_sparse_step",
    "dense_layers": "mlp_only_layers",
}


def _fail(source: str, key: str, expected: str, value: Any) -> HFImportError:
    return HFImportError(f"{source}: {key}: expected {expected}, got {value!r:.60}")


def _positive_int(source: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, key, "a positive integer", value)


def _positive_number(source: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _fail(source, key, "a positive finite number", value)


def _rope(source: str, hf: dict[str, Any]) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        fields = hf.get(key)
        if fields is None:
            continue
        if not isinstance(fields, dict):
            raise _fail(source, key, "an object or null", fields)
        kind = fields.get("rope_type", fields.get("type"))
        if kind is not None and not isinstance(kind, str):
            raise _fail(source, f"{key}.rope_type", "a string", kind)
        if kind == "llama3":
            for name in LLAMA3_ROPE:
                _positive_number(source, f"{key}.{name}", fields.get(name))
        for name in ("rope_theta", "partial_rotary_factor"):
            if name in fields:
                _positive_number(source, f"{key}.{name}", fields[name])


def check_hf_config(hf: Any, source: str) -> dict[str, Any]:
    """`hf` (the parsed config.json) when every key jdistill reads has the right type and range."""
    if not isinstance(hf, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(hf), "a number")
        raise HFImportError(f"{source}: expected a JSON object of model settings, got {kind}")
    architectures = hf.get("architectures")
    if architectures is not None and (
        not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures)
    ):
        raise _fail(source, "architectures", "a list of class names", architectures)
    for key in REQUIRED_SIZES:
        if key not in hf:
            raise HFImportError(f"{source}: {key}: missing (expected a positive integer)")
        _positive_int(source, key, hf[key])
    for key in OPTIONAL_SIZES:
        if hf.get(key) is not None:
            _positive_int(source, key, hf[key])
    if hf.get("head_dim") is None and hf["hidden_size"] % hf["num_attention_heads"]:
        raise HFImportError(
            f"{source}: num_attention_heads: expected a divisor of hidden_size={hf['hidden_size']} (or a head_dim "
            f"key), got {hf['num_attention_heads']}"
        )
    for key in POSITIVE_NUMBERS:
        if key in hf:
            _positive_number(source, key, hf[key])
    if "partial_rotary_factor" in hf:
        _positive_number(source, "partial_rotary_factor", hf["partial_rotary_factor"])
    for key in FLAGS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            raise _fail(source, key, "true or false", hf[key])
    if "hidden_act" in hf and not isinstance(hf["hidden_act"], str):
        raise _fail(source, "hidden_act", "a string", hf["hidden_act"])
    _rope(source, hf)
    return hf


def check_qwen3_next(hf: dict[str, Any], source: str) -> None:
    """The Gated DeltaNet sizes and layer list of a Qwen3-Next config."""
    for key in QWEN3_NEXT_SIZES:
        if key not in hf:
            raise HFImportError(f"{source}: {key}: missing (expected a positive integer)")
        _positive_int(source, key, hf[key])
    value = hf.get("layer_types")
    if value is not None and not isinstance(value, list):
        raise _fail(source, "layer_types", "a list", value)


def _count(source: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(source, key, "a non-negative integer", value)


def num_experts(hf: dict[str, Any], source: str) -> int:
    """The expert count: `num_experts` (the released configs) or `num_local_experts` (transformers 5's name for it
    in Qwen3-MoE); 0 when absent."""
    values = {key: hf[key] for key in ("num_experts", "num_local_experts") if hf.get(key) is not None}
    for key, value in values.items():
        _count(source, key, value)
    if len(set(values.values())) > 1:
        raise _fail(source, "num_local_experts", f"the same as num_experts={values['num_experts']}", values)
    return next(iter(values.values()), 0)


def moe_layers(hf: dict[str, Any], source: str) -> list[int]:
    """The 0-based layers transformers builds as mixture-of-experts blocks (`num_experts` > 0, not in
    `mlp_only_layers`, (i + 1) % `decoder_sparse_step` == 0), after checking those keys' types."""
    dense = hf.get("mlp_only_layers")
    if dense is not None and (
        not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense)
    ):
        raise _fail(source, "mlp_only_layers", "a list of layer numbers", dense)
    step = hf.get("decoder_sparse_step")
    if step is not None:
        _positive_int(source, "decoder_sparse_step", step)
    if not num_experts(hf, source):
        return []
    return [i for i in range(hf["num_hidden_layers"]) if i not in (dense or []) and (i + 1) % (step or 1) == 0]


def check_moe(hf: dict[str, Any], source: str, shared_expert: bool) -> None:
    """The sizes a model with mixture-of-experts blocks needs (`shared_expert`: Qwen3-Next's shared expert)."""
    keys = ["num_experts_per_tok", "moe_intermediate_size"]
    keys += ["shared_expert_intermediate_size"] if shared_expert else []
    for key in keys:
        if hf.get(key) is None:
            raise HFImportError(f"{source}: {key}: missing (expected a positive integer)")
        _positive_int(source, key, hf[key])
    if hf.get("norm_topk_prob") is not None and not isinstance(hf["norm_topk_prob"], bool):
        raise _fail(source, "norm_topk_prob", "true or false", hf["norm_topk_prob"])

"""Tensor names of Hugging Face Llama / Qwen3 checkpoints <-> jdistill parameters.

HF linear weights are `[out, in]`; jdistill kernels are `[in, out]`, so every projection is transposed. Keys and
values share one fused jdistill kernel (`key_value`: keys in the first `kv_heads * head_dim` columns).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from jdistill.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One HF tensor <-> (a slice of the columns of) one jdistill parameter."""

    hf_name: str
    param_path: tuple  # attribute names / list indices from the model root to the nnx.Param
    transpose: bool = False
    columns: tuple[int, int] | None = None  # [start, stop) columns of the jdistill parameter


def tensor_mappings(config: ModelConfig) -> list[TensorMapping]:
    """Every tensor of the checkpoint, in a fixed order."""
    kv_width = config.resolved_kv_heads * config.resolved_head_dim
    mappings = [TensorMapping("model.embed_tokens.weight", ("embed", "embedding")),
                TensorMapping("model.norm.weight", ("final_norm", "scale"))]
    if not config.tie_embeddings:
        mappings.append(TensorMapping("lm_head.weight", ("head", "kernel"), transpose=True))
    for i in range(config.num_layers):
        prefix, block = f"model.layers.{i}.", ("blocks", i)
        mappings += [
            TensorMapping(prefix + "input_layernorm.weight", block + ("attention_norm", "scale")),
            TensorMapping(prefix + "post_attention_layernorm.weight", block + ("mlp_norm", "scale")),
            TensorMapping(prefix + "self_attn.q_proj.weight", block + ("attention", "query_and_gate", "kernel"), True),
            TensorMapping(prefix + "self_attn.k_proj.weight", block + ("attention", "key_value", "kernel"), True,
                          (0, kv_width)),
            TensorMapping(prefix + "self_attn.v_proj.weight", block + ("attention", "key_value", "kernel"), True,
                          (kv_width, 2 * kv_width)),
            TensorMapping(prefix + "self_attn.o_proj.weight", block + ("attention", "output", "kernel"), True),
            TensorMapping(prefix + "mlp.gate_proj.weight", block + ("mlp", "gate", "kernel"), True),
            TensorMapping(prefix + "mlp.up_proj.weight", block + ("mlp", "up", "kernel"), True),
            TensorMapping(prefix + "mlp.down_proj.weight", block + ("mlp", "down", "kernel"), True),
        ]
        if config.qk_norm:
            mappings += [TensorMapping(prefix + "self_attn.q_norm.weight", block + ("attention", "query_norm", "scale")),
                         TensorMapping(prefix + "self_attn.k_norm.weight", block + ("attention", "key_norm", "scale"))]
    return mappings


def _param(model: nnx.Module, path: tuple) -> nnx.Param:
    node = model
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def load_tensors(model: nnx.Module, tensors: dict[str, np.ndarray], mappings: list[TensorMapping]) -> None:
    """Write checkpoint tensors into the model's parameters (shapes checked)."""
    for mapping in mappings:
        param = _param(model, mapping.param_path)
        value = np.asarray(tensors[mapping.hf_name], np.float32)
        value = value.T if mapping.transpose else value
        current = np.array(param[...])
        target = current if mapping.columns is None else current[:, slice(*mapping.columns)]
        if target.shape != value.shape:
            raise ValueError(f"{mapping.hf_name}: shape {value.shape[::-1] if mapping.transpose else value.shape} "
                             f"does not match the config")
        if mapping.columns is None:
            current = value
        else:
            current[:, slice(*mapping.columns)] = value
        param[...] = current


def dump_tensors(model: nnx.Module, mappings: list[TensorMapping]) -> dict[str, np.ndarray]:
    """The checkpoint tensors of a model (float32, contiguous)."""
    tensors = {}
    for mapping in mappings:
        value = np.asarray(_param(model, mapping.param_path)[...], np.float32)
        if mapping.columns is not None:
            value = value[:, slice(*mapping.columns)]
        tensors[mapping.hf_name] = np.ascontiguousarray(value.T if mapping.transpose else value)
    return tensors

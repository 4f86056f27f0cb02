"""Tensor names of Hugging Face Llama / Qwen3 / Qwen3-MoE / Qwen3-Next checkpoints <-> jdistill parameters.

HF linear weights are `[out, in]`; jdistill kernels are `[in, out]`, so every projection is transposed. Keys and
values share one fused jdistill kernel (`key_value`: keys in the first `kv_heads * head_dim` columns). A
mixture-of-experts block's experts are stacked in jdistill (`w_gate [E, d, f]`, ...): the released per-expert
tensors `mlp.experts.{e}.gate_proj.weight [f, d]` are slice e of them, transposed (docs/moe.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.models.config import ModelConfig

ParamPath = tuple[str | int, ...]  # attribute names and list indices from the model root down to one nnx.Param


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One HF tensor <-> (a slice of the columns of) one jdistill parameter."""

    hf_name: str
    param_path: ParamPath
    transpose: bool = False
    columns: tuple[int, int] | None = None  # [start, stop) columns of the jdistill parameter
    row_order: tuple[int, ...] | None = None  # HF rows in jdistill column order (applied before transposing)
    conv: bool = False  # HF depthwise Conv1d weight [channels, 1, K] <-> jdistill [K, channels]
    expert: int | None = None  # the HF tensor is slice [expert] of the jdistill parameter's first axis


def _query_gate_rows(heads: int, head_dim: int) -> tuple[int, ...]:
    """Qwen3-Next's q_proj rows are [query_h, gate_h] per head h; jdistill's fused columns are all queries, then
    all gates (head-major)."""
    query = [h * 2 * head_dim + j for h in range(heads) for j in range(head_dim)]
    gate = [h * 2 * head_dim + head_dim + j for h in range(heads) for j in range(head_dim)]
    return tuple(query + gate)


def _attention_mappings(config: ModelConfig, prefix: str, block: ParamPath) -> list[TensorMapping]:
    kv_width = config.resolved_kv_heads * config.resolved_head_dim
    attention = block + ("attention",)
    rows = _query_gate_rows(config.num_heads, config.resolved_head_dim) if config.gate == "elementwise" else None
    mappings = [
        TensorMapping(
            prefix + "self_attn.q_proj.weight", attention + ("query_and_gate", "kernel"), True, row_order=rows
        ),
        TensorMapping(prefix + "self_attn.k_proj.weight", attention + ("key_value", "kernel"), True, (0, kv_width)),
        TensorMapping(
            prefix + "self_attn.v_proj.weight", attention + ("key_value", "kernel"), True, (kv_width, 2 * kv_width)
        ),
        TensorMapping(prefix + "self_attn.o_proj.weight", attention + ("output", "kernel"), True),
    ]
    if config.qk_norm:
        mappings += [
            TensorMapping(prefix + "self_attn.q_norm.weight", attention + ("query_norm", "scale")),
            TensorMapping(prefix + "self_attn.k_norm.weight", attention + ("key_norm", "scale")),
        ]
    return mappings


def _deltanet_mappings(prefix: str, block: ParamPath) -> list[TensorMapping]:
    layer, hf = block + ("linear_attention",), prefix + "linear_attn."
    return [
        TensorMapping(hf + "in_proj_qkvz.weight", layer + ("in_proj_qkvz", "kernel"), True),
        TensorMapping(hf + "in_proj_ba.weight", layer + ("in_proj_ba", "kernel"), True),
        TensorMapping(hf + "conv1d.weight", layer + ("conv_weight",), conv=True),
        TensorMapping(hf + "dt_bias", layer + ("dt_bias",)),
        TensorMapping(hf + "A_log", layer + ("A_log",)),
        TensorMapping(hf + "norm.weight", layer + ("norm", "scale")),
        TensorMapping(hf + "out_proj.weight", layer + ("out_proj", "kernel"), True),
    ]


def _mlp_mappings(config: ModelConfig, index: int, prefix: str, block: ParamPath) -> list[TensorMapping]:
    """A dense SwiGLU MLP, or a MoE block: router `mlp.gate`, the experts one by one, the gated shared expert."""
    mlp, hf = block + ("mlp",), prefix + "mlp."
    projections = (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"))
    if not config.is_moe_layer(index):
        return [TensorMapping(f"{hf}{name}.weight", mlp + (attr, "kernel"), True) for name, attr in projections]
    mappings = [TensorMapping(hf + "gate.weight", mlp + ("router",), True)]
    for e in range(config.num_experts):
        mappings += [
            TensorMapping(f"{hf}experts.{e}.{name}.weight", mlp + ("w_" + attr,), True, expert=e)
            for name, attr in projections
        ]
    if config.shared_expert_dim:
        mappings += [
            TensorMapping(f"{hf}shared_expert.{name}.weight", mlp + ("shared_expert", attr, "kernel"), True)
            for name, attr in projections
        ]
        mappings.append(TensorMapping(hf + "shared_expert_gate.weight", mlp + ("shared_gate", "kernel"), True))
    return mappings


def tensor_mappings(config: ModelConfig) -> list[TensorMapping]:
    """Every tensor of the checkpoint, in a fixed order."""
    mappings = [
        TensorMapping("model.embed_tokens.weight", ("embed", "embedding")),
        TensorMapping("model.norm.weight", ("final_norm", "scale")),
    ]
    if not config.tie_embeddings:
        mappings.append(TensorMapping("lm_head.weight", ("head", "kernel"), transpose=True))
    for i in range(config.num_layers):
        prefix, block = f"model.layers.{i}.", ("blocks", i)
        mappings += [
            TensorMapping(prefix + "input_layernorm.weight", block + ("attention_norm", "scale")),
            TensorMapping(prefix + "post_attention_layernorm.weight", block + ("mlp_norm", "scale")),
            *_mlp_mappings(config, i, prefix, block),
        ]
        if config.layer_type(i) == "deltanet":
            mappings += _deltanet_mappings(prefix, block)
        else:
            mappings += _attention_mappings(config, prefix, block)
    return mappings


def _param(model: nnx.Module, path: ParamPath) -> nnx.Param:
    node: Any = model
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def load_tensors(model: nnx.Module, tensors: dict[str, np.ndarray], mappings: list[TensorMapping]) -> None:
    """Write checkpoint tensors into the model's parameters (shapes checked); a parameter filled from several
    tensors (key and value columns, the experts of a MoE block) is assembled on the host and written once."""
    by_param: dict[ParamPath, list[TensorMapping]] = {}
    for mapping in mappings:
        by_param.setdefault(mapping.param_path, []).append(mapping)
    for path, group in by_param.items():
        param = _param(model, path)
        whole = len(group) == 1 and group[0].columns is None and group[0].expert is None
        # the parts (key and value columns, experts) cover the whole parameter: assembled from zeros, so that the
        # model may be abstract (`nnx.eval_shape`: no random initialisation to overwrite)
        current = None if whole else np.zeros(param.get_value().shape, np.float32)
        for mapping in group:
            raw = np.asarray(tensors[mapping.hf_name], np.float32)
            target = None if current is None else _part(current, mapping)  # a view into `current`
            try:
                value = _to_param_layout(raw, mapping)
            except IndexError:
                value = None
            if value is None or value.shape != (tuple(param.get_value().shape) if target is None else target.shape):
                raise ValueError(f"{mapping.hf_name}: shape {raw.shape} does not match the config")
            if target is None:
                current = value
            else:
                target[...] = value
        param.set_value(jnp.asarray(current))


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every checkpoint tensor of `config` (from the model's abstract parameters: nothing allocated)."""
    from jdistill.models import Transformer

    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    shapes = {}
    for mapping in tensor_mappings(config):
        shape = tuple(_param(model, mapping.param_path).get_value().shape)
        if mapping.expert is not None:
            shape = shape[1:]
        if mapping.columns is not None:
            shape = (shape[0], mapping.columns[1] - mapping.columns[0])
        if mapping.conv:
            shape = (shape[1], 1, shape[0])
        elif mapping.transpose:
            shape = shape[::-1]
        shapes[mapping.hf_name] = shape
    return shapes


def dump_tensors(model: nnx.Module, mappings: list[TensorMapping]) -> dict[str, np.ndarray]:
    """The checkpoint tensors of a model (float32, contiguous)."""
    tensors, host = {}, {}
    for mapping in mappings:
        if mapping.param_path not in host:  # one device -> host copy per parameter (all experts of a MoE block)
            host[mapping.param_path] = np.asarray(_param(model, mapping.param_path)[...], np.float32)
        value = _part(host[mapping.param_path], mapping)
        tensors[mapping.hf_name] = np.ascontiguousarray(_to_hf_layout(value, mapping))
    return tensors


def _part(value: np.ndarray, mapping: TensorMapping) -> np.ndarray:
    """The slice of a parameter's value that `mapping`'s tensor holds (a view)."""
    if mapping.expert is not None:
        value = value[mapping.expert]
    if mapping.columns is not None:
        value = value[:, slice(*mapping.columns)]
    return value


def _to_param_layout(value: np.ndarray, mapping: TensorMapping) -> np.ndarray:
    if mapping.conv:
        return value[:, 0, :].T
    if mapping.row_order is not None:
        value = value[np.asarray(mapping.row_order)]
    return value.T if mapping.transpose else value


def _to_hf_layout(value: np.ndarray, mapping: TensorMapping) -> np.ndarray:
    if mapping.conv:
        return value.T[:, None, :]
    value = value.T if mapping.transpose else value
    if mapping.row_order is not None:
        restored = np.empty_like(value)
        restored[np.asarray(mapping.row_order)] = value
        value = restored
    return value

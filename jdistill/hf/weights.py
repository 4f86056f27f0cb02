"""Tensor names of Hugging Face Llama / Qwen3 / Qwen3-MoE / Qwen3-Next checkpoints <-> jdistill parameters.

HF linear weights are `[out, in]`; jdistill kernels are `[in, out]`, so every projection is transposed. Keys and
values share one fused jdistill kernel (`key_value`: keys in the first `kv_heads * head_dim` columns). A
mixture-of-experts block's experts are stacked in jdistill (`w_gate [E, d, f]`, ...): the released per-expert
tensors `mlp.experts.{e}.gate_proj.weight [f, d]` are slice e of them, transposed (docs/moe.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
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


def load_tensors(
    model: nnx.Module,
    tensors: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    mappings: list[TensorMapping],
    shardings: Mapping[ParamPath, jax.sharding.Sharding] | None = None,
) -> None:
    """Write checkpoint tensors into the model's parameters (shapes checked), one parameter at a time.

    `tensors`: {name: array}, or a function reading one tensor by name (called when its parameter is built, so the
    host holds one parameter's tensors at a time). A parameter filled from several tensors (key and value columns,
    the experts of a MoE block) is assembled on the host and written once. `shardings` (parameter path ->
    sharding): the parameter is built as a global array of that sharding from the regions its addressable devices
    hold (`jax.make_array_from_callback`): nothing whole lands on one device, and a MoE block's experts are read
    only by the processes whose devices hold them (each tensor once per process). Parameters without a sharding go
    to the default device."""
    read = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    by_param: dict[ParamPath, list[TensorMapping]] = {}
    for mapping in mappings:
        by_param.setdefault(mapping.param_path, []).append(mapping)
    for path, group in by_param.items():
        param = _param(model, path)
        shape = tuple(param.get_value().shape)
        region = _region_reader(group, shape, read)
        sharding = None if shardings is None else shardings.get(path)
        if sharding is None:
            param.set_value(jnp.asarray(region(tuple(slice(None) for _ in shape))))
        else:
            param.set_value(jax.make_array_from_callback(shape, sharding, functools.partial(_region_at, region)))


def _region_at(region: Callable[[tuple[slice, ...]], np.ndarray], index: tuple[slice, ...] | None) -> np.ndarray:
    return region(index or ())  # `make_array_from_callback` passes None for a 0-d array


def _converted(raw: np.ndarray, mapping: TensorMapping, shape: tuple[int, ...]) -> np.ndarray:
    """A checkpoint tensor in the parameter's layout, float32; a tensor of another shape is a ValueError."""
    raw = np.asarray(raw, np.float32)
    try:
        value = _to_param_layout(raw, mapping)
    except IndexError:
        value = None
    if value is None or value.shape != shape:
        raise ValueError(f"{mapping.hf_name}: shape {raw.shape} does not match the config")
    return value


def _region_reader(
    group: list[TensorMapping], shape: tuple[int, ...], read: Callable[[str], np.ndarray]
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """index (a tuple of slices) -> that region of the parameter filled from `group`'s tensors. The experts of a MoE
    parameter (slice e of its first axis = tensor e) are read only for the experts the region covers; any other
    parameter is assembled whole once (from zeros where parts cover it: the model may be abstract) and sliced."""
    if all(mapping.expert is not None for mapping in group):
        by_expert = {mapping.expert: mapping for mapping in group}
        cache: dict[int, np.ndarray] = {}

        def experts(index: tuple[slice, ...]) -> np.ndarray:
            chosen = range(shape[0])[index[0]]
            for e in chosen:
                if e not in cache:
                    cache[e] = _converted(read(by_expert[e].hf_name), by_expert[e], shape[1:])
            return np.stack([cache[e][index[1:]] for e in chosen]) if chosen else np.zeros((0, *shape[1:]), np.float32)

        return experts
    whole: list[np.ndarray] = []

    def assembled(index: tuple[slice, ...]) -> np.ndarray:
        if not whole:
            if len(group) == 1 and group[0].columns is None and group[0].expert is None:
                whole.append(_converted(read(group[0].hf_name), group[0], shape))
            else:
                value = np.zeros(shape, np.float32)
                for mapping in group:
                    target = _part(value, mapping)  # a view into `value`
                    target[...] = _converted(read(mapping.hf_name), mapping, target.shape)
                whole.append(value)
        return whole[0][index]

    return assembled


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

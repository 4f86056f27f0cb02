"""The two layouts of a mixture-of-experts block's expert weights in a Hugging Face checkpoint (docs/moe.md):

  - released (the Qwen3-MoE / Qwen3-Next checkpoints on the Hub, and what transformers' `save_pretrained` writes by
    default): one tensor per expert and projection, `mlp.experts.{e}.gate_proj.weight [f, d]`, `up_proj [f, d]`,
    `down_proj [d, f]`;
  - packed (transformers 5's in-memory form, written by `save_pretrained(save_original_format=False)`):
    `mlp.experts.gate_up_proj [E, 2f, d]` (gate rows first, then up) and `mlp.experts.down_proj [E, d, f]`.

jdistill reads both and writes the released one; `jdistill.hf.weights` maps the released names, and a packed
checkpoint's per-expert tensors are read as slices of the packed ones (`packed_part`).
"""

from __future__ import annotations

from jdistill.hf.config_schema import HFImportError
from jdistill.models.config import ModelConfig

RELEASED, PACKED = "released", "packed"


def _moe_prefixes(config: ModelConfig) -> list[str]:
    return [f"model.layers.{i}.mlp.experts." for i in range(config.num_layers) if config.is_moe_layer(i)]


def expert_layout(config: ModelConfig, names: set[str], source: str) -> str:
    """RELEASED or PACKED, from the tensor names of the checkpoint (the first MoE block decides; a block in the
    other layout then shows as a missing tensor). Neither: a one-line HFImportError."""
    prefixes = _moe_prefixes(config)
    if not prefixes:
        return RELEASED
    prefix = prefixes[0]
    if prefix + "gate_up_proj" in names:
        return PACKED
    if prefix + "0.gate_proj.weight" in names:
        return RELEASED
    block = prefix.removesuffix("experts.")
    found = sorted(name.removeprefix(block) for name in names if name.startswith(block))
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "") if found else "no tensors"
    raise HFImportError(
        f"{source}: {block.rstrip('.')}: unknown mixture-of-experts layout ({shown}); expected "
        "experts.{e}.gate_proj.weight (released) or experts.gate_up_proj (transformers' packed)"
    )


def packed_shapes(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`shapes` of the released names (`jdistill.hf.weights.expected_hf_shapes`) with each MoE block's per-expert
    tensors replaced by the two packed ones."""
    experts, d, f = config.num_experts, config.d_model, config.resolved_moe_mlp_dim
    out = {name: shape for name, shape in shapes.items() if not _is_expert_tensor(config, name)}
    for prefix in _moe_prefixes(config):
        out[prefix + "gate_up_proj"] = (experts, 2 * f, d)
        out[prefix + "down_proj"] = (experts, d, f)
    return out


def _is_expert_tensor(config: ModelConfig, name: str) -> bool:
    return any(name.startswith(prefix) and name[len(prefix)].isdigit() for prefix in _moe_prefixes(config))


def packed_part(config: ModelConfig, name: str) -> tuple[str, int, slice] | None:
    """Where released tensor `name` lies in a packed checkpoint: (packed tensor, expert, its rows), or None for a
    tensor that is not an expert's."""
    for prefix in _moe_prefixes(config):
        if name.startswith(prefix) and name[len(prefix)].isdigit():
            expert, projection = name[len(prefix) :].split(".", 1)
            f = config.resolved_moe_mlp_dim
            rows = {"gate_proj.weight": slice(0, f), "up_proj.weight": slice(f, 2 * f)}.get(projection)
            return (prefix + "gate_up_proj" if rows else prefix + "down_proj"), int(expert), rows or slice(None)
    return None

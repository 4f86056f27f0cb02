"""Depth pruning of a decoder LM: keep some of its blocks, in order (docs/checkpoints.md#depth-pruning).

    keep = layers_to_keep("block_influence", num_layers=28, keep_count=14, scores=block_influence(model, batches))
    student = prune_layers(teacher, keep)

Block influence (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect";
used for depth pruning by Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation" (Minitron)): with x_l the hidden states entering block l and x_{l+1} those leaving it,

    BI_l = 1 - E[cos(x_l, x_{l+1})]

the expectation over the valid token positions of calibration batches. A block that barely changes its input
(cos ~ 1, BI ~ 0) is the first to go; the blocks with the highest BI are kept.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sized

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.errors import ConfigError
from jdistill.hf.cli_args import METHODS
from jdistill.models import Transformer
from jdistill.progress import step_bar


def prune_layers(model: Transformer, keep: list[int]) -> Transformer:
    """A new Transformer with blocks `keep` of `model` (strictly increasing indices), everything else shared.

    Block j of the result is block `keep[j]` of `model` (its weights, its mixer type in a hybrid `layer_pattern`,
    its MLP or mixture of experts: `dense_layers` is rebuilt with `moe_every` 1); the embedding, final norm and
    head are `model`'s. Nothing is initialised at random and `model` is not changed. Exit heads refer to block
    numbers, so a model with `exit_layers` is refused.
    """
    config = model.config
    if config.exit_layers:
        raise ValueError("prune_layers: a model with exit_layers cannot be pruned (exits name block numbers)")
    if not keep or list(keep) != sorted(set(keep)) or not 0 <= keep[0] <= keep[-1] < config.num_layers:
        raise ValueError(f"prune_layers: keep must be increasing block indices in [0, {config.num_layers}); got {keep}")
    pattern = "".join(config.layer_pattern[i % len(config.layer_pattern)] for i in keep)
    if len(set(pattern)) == 1:
        pattern = pattern[0]
    moe = [j for j, i in enumerate(keep) if config.is_moe_layer(i)]  # each kept block keeps its MLP kind
    dense = tuple(j for j in range(len(keep)) if j not in moe)
    pruned_config = dataclasses.replace(
        config,
        num_layers=len(keep),
        layer_pattern=pattern,
        num_experts=config.num_experts if moe else 0,
        moe_every=1,
        dense_layers=dense if moe else (),
    )
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(pruned_config, rngs=nnx.Rngs(0))))
    values = nnx.to_pure_dict(nnx.state(model))
    blocks = values["blocks"]
    values["blocks"] = {j: blocks[i] for j, i in enumerate(keep)}
    nnx.replace_by_pure_dict(abstract, values)
    return nnx.merge(graphdef, abstract)


def layers_to_keep(method: str, num_layers: int, keep_count: int, scores: np.ndarray | None = None) -> list[int]:
    """The block indices (increasing) that `method` keeps.

    first: blocks 0 .. keep_count - 1. every_other: evenly strided from block 0, block floor(j * num_layers /
    keep_count) for j < keep_count (every second block when keep_count = num_layers / 2). block_influence: the
    `keep_count` blocks with the highest `scores` (ties: the earlier block).
    """
    if method not in METHODS:
        raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not 1 <= keep_count < num_layers:
        raise ConfigError(f"--layers: expected an integer in [1, {num_layers - 1}] (the teacher has {num_layers})")
    if method == "first":
        return list(range(keep_count))
    if method == "every_other":
        return [j * num_layers // keep_count for j in range(keep_count)]
    if scores is None or len(scores) != num_layers:
        raise ValueError(f"block_influence needs {num_layers} scores")
    order = sorted(range(num_layers), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep_count])


@jax.jit
def _cosine_sums(hidden_states: tuple, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum over valid positions of cos(x_l, x_{l+1}) per block [num_layers], number of valid positions)."""
    weights = mask.astype(jnp.float32)
    sums = []
    for x, y in itertools.pairwise(hidden_states):
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
        cos = jnp.sum(x * y, -1) / jnp.maximum(jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1), 1e-12)
        sums.append(jnp.sum(cos * weights))
    return jnp.stack(sums), jnp.sum(weights)


def block_influence(model: Transformer, batches: Iterable[dict], *, progress: bool = False) -> np.ndarray:
    """BI_l = 1 - E[cos(x_l, x_{l+1})] per block, float64 `[num_layers]`, over the positions where a batch's
    `mask` is True (every position when a batch has no mask). Batches: {"inputs" int [B, S], "mask" bool [B, S]}
    (+ optional `segment_ids` / `positions` for packed documents). `progress`: a bar over the batches."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def hidden(state: nnx.State, batch: dict) -> tuple:
        extra = {key: batch[key] for key in ("segment_ids", "positions") if key in batch}
        out = nnx.merge(graphdef, state)(batch["inputs"], return_hidden_states=True, logits=False, **extra)
        return out.hidden_states

    total = np.zeros(model.config.num_layers, np.float64)
    count = 0.0
    total_batches = len(batches) if isinstance(batches, Sized) else None
    bar = step_bar(total_batches, "block influence (batches)", enabled=progress)
    for batch in batches:
        inputs = {key: jnp.asarray(batch[key]) for key in ("inputs", "segment_ids", "positions") if key in batch}
        mask = jnp.asarray(batch["mask"]) if "mask" in batch else jnp.ones(inputs["inputs"].shape, bool)
        sums, valid = _cosine_sums(hidden(state, inputs), mask)
        total += np.asarray(sums, np.float64)
        count += float(valid)
        bar.update(1)
    bar.close()
    if count == 0:
        raise ConfigError("block influence: the calibration batches have no valid (masked-in) position")
    return 1.0 - total / count


def format_scores(scores: np.ndarray, keep: list[int]) -> str:
    """The table `jdistill prune` prints: layer, BI, kept."""
    lines = ["layer  block_influence  kept"]
    lines += [f"{i:5d}  {score:15.6f}  {'yes' if i in keep else 'no'}" for i, score in enumerate(scores)]
    return "\n".join(lines)

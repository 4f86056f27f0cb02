"""The ceiling of self-speculative decoding by model width (`jdistill bench early-exit --parts cap --cap-widths`).

With the blocks above the draft exit made the identity (`early_exit.identity_above`) every draft is accepted and
a round emits d + 1 tokens, so the speed-up over plain greedy decoding is the most any trained early exit could
give at that draft length. It depends on the hardware's cost of verifying d + 1 tokens against decoding one, and
that depends on the model's size: while the weights fit in cache a CPU is compute-bound at one token and the
verify pass costs about what decoding its tokens one by one costs; once they do not, one token's step is bound by
reading the weights from memory and the verify pass shares that read. The ceiling needs no training (acceptance
is 1 by construction), so each width is a randomly initialised copy of the checkpoint's architecture with
`d_model` changed and everything else in proportion: the head size kept, the query and key/value head counts
and `mlp_dim` scaled with the width.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jdistill.errors import ConfigError


def widened(config, width: int):
    """`config` (a decoder LM's `ModelConfig`) at `d_model = width`: the same head size, heads and key/value heads
    scaled by width / d_model (their ratio kept), `mlp_dim` scaled the same way. One-line `ConfigError` when the
    width does not give whole heads."""
    head_dim = config.head_dim or config.d_model // config.num_heads
    kv_heads = config.num_kv_heads or config.num_heads
    heads, rest = divmod(width, head_dim)
    group = config.num_heads // kv_heads
    if width <= 0 or rest or heads % group:
        raise ConfigError(
            f"--cap-widths: {width} is not a positive multiple of {head_dim * group} "
            f"(head size {head_dim} x {group} query heads per key/value head)"
        )
    return dataclasses.replace(
        config,
        d_model=width,
        num_heads=heads,
        num_kv_heads=heads // group,
        head_dim=head_dim,
        mlp_dim=config.mlp_dim * width // config.d_model,
    )


def parameter_count(model) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))))


def ceiling_by_width(model, prompts, *, widths, exits, draft_lens, new_tokens: int, repeats: int, loops) -> dict:
    """{str(width): {"params", "exit{E}": run_benchmark figures with every draft accepted}} for randomly initialised
    `widened` copies of `model` (seed 0)."""
    from jdistill.bench.early_exit import ceiling
    from jdistill.models import Transformer

    configs = {width: widened(model.config, width) for width in widths}  # every width checked before any compute
    figures: dict = {}
    for width, config in configs.items():
        wide = Transformer(config, rngs=nnx.Rngs(0))
        figures[str(width)] = {
            "params": parameter_count(wide),
            **ceiling(
                wide, prompts, exits=exits, draft_lens=draft_lens, new_tokens=new_tokens, repeats=repeats, loops=loops
            ),
        }
    return figures

"""One decoder block run piece by piece, for the dynamic-compute methods of docs/early_exit.md (learned
middle-layer skipping, Adaptive Computation Modules, self-ablation) and a small Adam loop that fits their extra
parameters on a frozen or fine-tuned model.

`run_block` computes exactly `Block.decode` (pre-norm attention over a key/value cache, then the MLP) with three
optional changes: `key_valid [batch, max_len]` masks cache slots from the attention (tokens that skipped the
block), `head_mask [batch, seq, heads]` multiplies each head's output and `mlp_fn(x)` replaces the MLP (an ACM, a
neuron-masked MLP). A whole sequence runs through the same code with a cache as long as the sequence
(`sequence_cache`): causal attention is the cache's slot mask, so teacher-forced and token-by-token runs share it.
Dense attention + GLU blocks only (no recurrent layers, no mixture of experts, no GateSkip gates).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jdistill.errors import UserError
from jdistill.nn.activations import GATES, glu
from jdistill.nn.kv_cache import KVCache, cached_attention
from jdistill.nn.mlp import GLUMLP
from jdistill.nn.moe import MoE


class DynamicModelError(UserError):
    """A model the dynamic-compute methods cannot run (recurrent, mixture-of-experts or gated blocks)."""


def check_model(model, method: str, *, glu_mlp: bool = False) -> None:
    """One-line error unless every block is dense attention + a dense (with `glu_mlp`: GLU) MLP without GateSkip
    gates (an LM)."""
    cfg = model.config
    if cfg.kind != "lm":
        raise DynamicModelError(f"{method}: needs a decoder language model (model.kind=lm)")
    for index, block in enumerate(model.blocks):
        mlp_ok = isinstance(block.mlp, GLUMLP) if glu_mlp else not isinstance(block.mlp, MoE)
        if hasattr(block, "linear_attention") or not mlp_ok or cfg.residual_gates:
            kind = "a GLU" if glu_mlp else "a dense"
            raise DynamicModelError(
                f"{method}: block {index + 1} is not attention + {kind} MLP without residual gates "
                f"(layer_pattern {cfg.layer_pattern!r}, mlp {cfg.mlp!r}, residual_gates {cfg.residual_gates})"
            )


def glu_hidden(mlp: GLUMLP, x):
    """The GLU's hidden activations `[..., hidden]` (its output is `mlp.down` of them)."""
    gate_fn = mlp.gating.gate if mlp.gating is not None else GATES[mlp.activation]
    return glu(mlp.gate(x), mlp.up(x), gate_fn, mlp.order)


def sequence_cache(model, batch: int, seq: int) -> list[KVCache]:
    """Empty per-block caches of `seq` slots (offset 0): a teacher-forced sequence written at positions 0..seq-1."""
    return list(model.init_cache(batch, seq))


def run_block(
    block,
    h,
    positions,
    cache: KVCache,
    *,
    key_valid=None,
    head_mask=None,
    mlp_fn: Callable | None = None,
):
    """(block output, cache with h's keys and values written) for `h [batch, seq, d]` at `positions`."""
    attention = block.attention
    batch, seq, _ = h.shape
    q, k, v, gate = attention._project(block.attention_norm(h), positions)
    cache = cache.write(k, v, positions)
    out = cached_attention(q, cache, gate, positions, window=attention.config.sliding_window, key_valid=key_valid)
    if head_mask is not None:
        out = out * head_mask[..., None].astype(out.dtype)
    h = h + attention.output(out.reshape(batch, seq, -1))
    x = block.mlp_norm(h)
    return h + (block.mlp(x) if mlp_fn is None else mlp_fn(x)), cache


def hidden_and_mlp_inputs(model, inputs):
    """Teacher-forced pass of the dense model: (hidden states `[L + 1, batch, seq, d]` as `return_hidden_states`
    gives them, every block's MLP input `mlp_norm(h + attention)` `[L, batch, seq, d]`)."""
    batch, seq = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    h = model.embed(inputs)
    hidden, mlp_inputs = [h], []
    for block, cache in zip(model.blocks, sequence_cache(model, batch, seq), strict=True):
        captured: list = []

        def dense(x, block=block, captured=captured):
            captured.append(x)
            return block.mlp(x)

        h, _ = run_block(block, h, positions, cache, mlp_fn=dense)
        hidden.append(h)
        mlp_inputs.append(captured[0])
    return jnp.stack(hidden), jnp.stack(mlp_inputs)


def fit_adam(loss_fn, params, batches, *, steps: int, learning_rate: float, seed: int = 0):
    """Minimise `loss_fn(params, batch, rng) -> (loss, metrics)` by Adam for `steps` steps, cycling over `batches`
    (a list of dicts of arrays); one plain jitted step. Returns (params, the last step's metrics)."""
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, batch, rng):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    opt_state = optimizer.init(params)
    metrics: dict = {}
    key = jax.random.key(seed)
    for index in range(steps):
        params, opt_state, metrics = step(
            params, opt_state, batches[index % len(batches)], jax.random.fold_in(key, index)
        )
    return params, jax.device_get(metrics)

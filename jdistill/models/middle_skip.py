"""Learned middle-layer skipping (after Lawson and Aitchison 2025, "Learning to Skip the Middle Layers of
Transformers"; docs/early_exit.md#learned-middle-layer-skipping).

A router reads each token's hidden state after the first `router_layer` blocks and picks how many central blocks
that token skips: choice k = 0 .. K skips the symmetric span S_k of the k-th central blocks (for L = 8 blocks,
0-based: S_1 = {3, 4}, S_2 = {2 .. 5}, S_3 = {1 .. 6}; an odd L starts from its single middle block), so the
outer blocks, which carry the most specific computation, always run. A token that skips block l passes its
hidden state through it unchanged and, as its keys and values there are never computed, is masked from every
later query's attention in that block (`key_valid` of `jdistill.nn.kv_cache.cached_attention`).

Router: `pi = softmax(W rms(h_r) + b)` over the K + 1 choices. On a frozen backbone it is trained by the
cost-aware routing objective (`jei_dnn.expected_loss_and_cost`)

    L = mean_t sum_k pi_k(t) (CE_k(t) + lam c_k),       c_k = (L - |S_k|) / L

with CE_k(t) the token's cross-entropy when every token skips S_k (so the K + 1 losses come from K + 1 plain
forwards; the mixed routing at inference additionally masks skipped tokens from other tokens' attention).
Inference: the largest k with P(choice >= k) >= tau (tau = 1/2: the median choice); sweeping tau traces quality
against blocks used.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.models.dynamic_blocks import check_model, run_block, sequence_cache
from jdistill.models.generate import _argmax
from jdistill.nn.kv_cache import KVCache


def central_spans(num_layers: int, router_layer: int) -> list[tuple[int, int]]:
    """[start, stop) of S_0 (empty) .. S_K, 0-based blocks; the largest span leaves the first `router_layer`
    blocks (the router's input) and as many at the top."""
    spans = [(0, 0)]
    size = 2 if num_layers % 2 == 0 else 1
    while True:
        start = (num_layers - size) // 2
        if start < router_layer:
            return spans
        spans.append((start, start + size))
        size += 2


def init_router(d_model: int, num_choices: int) -> dict:
    """A zero router that prefers skipping nothing (pi_0 ~ 0.9 for 4 choices)."""
    return {"w": jnp.zeros((d_model, num_choices), jnp.float32), "b": jnp.zeros((num_choices,)).at[0].set(3.0)}


def router_logits(router: dict, h):
    """`h [..., d]` (the output of block `router_layer`) -> logits `[..., K + 1]` over the choices."""
    h = h.astype(jnp.float32)
    normed = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)
    return normed @ router["w"] + router["b"]


def span_costs(num_layers: int, spans) -> np.ndarray:
    """c_k: the fraction of blocks a token with choice k runs."""
    return np.asarray([(num_layers - (stop - start)) / num_layers for start, stop in spans], np.float32)


def choose(logits, threshold: float = 0.5):
    """The largest choice k with P(choice >= k) >= threshold (0 if none), `[...]` int32."""
    pi = jax.nn.softmax(logits, axis=-1)
    at_least = jnp.cumsum(pi[..., ::-1], axis=-1)[..., ::-1]  # P(choice >= k)
    ks = jnp.arange(pi.shape[-1])
    return jnp.max(jnp.where(at_least >= threshold, ks, 0), axis=-1).astype(jnp.int32)


def skip_table(spans, num_layers: int) -> np.ndarray:
    """bool `[K + 1, L]`: whether choice k skips block l."""
    table = np.zeros((len(spans), num_layers), bool)
    for k, (start, stop) in enumerate(spans):
        table[k, start:stop] = True
    return table


def forward(model, inputs, choices, spans):
    """Teacher-forced pass with per-token choices `[batch, seq]`: (hidden states `[L + 1, batch, seq, d]`,
    logits). A skipped (token, block) passes its input through and its key is masked in that block."""
    batch, seq = inputs.shape
    skip = jnp.asarray(skip_table(spans, model.config.num_layers))[choices]  # [batch, seq, L]
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    h = model.embed(inputs)
    hidden = [h]
    for index, (block, cache) in enumerate(zip(model.blocks, sequence_cache(model, batch, seq), strict=True)):
        out, _ = run_block(block, h, positions, cache, key_valid=~skip[:, :, index])
        h = jnp.where(skip[:, :, index, None], h, out)
        hidden.append(h)
    return jnp.stack(hidden), model._logits(model.final_norm(h))


def uniform_span_losses(model, inputs, targets, spans):
    """CE_k `[K + 1, batch, seq]`: every token's cross-entropy when all tokens skip S_k (plain forwards)."""
    losses = []
    for start, stop in spans:
        keep = jnp.asarray([not start <= index < stop for index in range(model.config.num_layers)])
        logits = model(inputs, layer_keep=jnp.broadcast_to(keep, (inputs.shape[0], keep.shape[0]))).logits
        log_p = jax.nn.log_softmax(logits, axis=-1)
        losses.append(-jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0])
    return jnp.stack(losses)


def _decode_block(block, h, position, cache: KVCache, valid, skip):
    """One token through one block unless `skip` (None: always run): (h, cache, validity of the cache slots
    `[batch, max_len]`)."""
    slot = cache.slots(position)[:, 0]
    rows = jnp.arange(h.shape[0])

    def run(h, cache, valid):
        valid = valid.at[rows, slot].set(True)
        out, cache = run_block(block, h, position, cache, key_valid=valid)
        return out, cache, valid

    def skipped(h, cache, valid):
        return h, cache, valid.at[rows, slot].set(False)

    if skip is None:
        return run(h, cache, valid)
    return jax.lax.cond(skip, skipped, run, h, cache, valid)


def _generate(model, router, prompt, *, max_new_tokens: int, router_layer: int, threshold: float):
    batch, width = prompt.shape
    layers = model.config.num_layers
    spans = central_spans(layers, router_layer)
    table = jnp.asarray(skip_table(spans, layers))
    caches = model.init_cache(batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(width), (batch, width))
    logits, caches = model.decode(prompt, positions=positions, caches=caches, last_only=True)  # full depth
    valid = jnp.broadcast_to(jnp.arange(width + max_new_tokens) < width, (layers, batch, width + max_new_tokens))
    first = _argmax(logits[:, 0]).astype(jnp.int32)
    blocks = list(model.blocks)

    def step(carry, index):
        token, caches, valid = carry
        position = jnp.full((batch, 1), width + index)
        h = model.embed(token[:, None])
        caches, valid = list(caches), list(valid)
        choice = jnp.int32(0)
        for layer, block in enumerate(blocks):
            if layer == router_layer:
                choice = jnp.max(choose(router_logits(router, h[:, 0]), threshold))  # the batch skips together
            skip = table[choice, layer] if layer >= router_layer else None
            h, caches[layer], valid[layer] = _decode_block(block, h, position, caches[layer], valid[layer], skip)
        nxt = _argmax(model._logits(model.final_norm(h[:, 0]))).astype(jnp.int32)
        return (nxt, tuple(caches), jnp.stack(valid)), (nxt, choice)

    (_, _, _), (tokens, choices) = jax.lax.scan(step, (first, caches, valid), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], tokens.T], axis=1), choices


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "router_layer", "threshold"))
def _generate_jit(graphdef, params, router, prompt, **options):
    return _generate(nnx.merge(graphdef, params), router, prompt, **options)


def generate_with_skips(model, router: dict, prompt_ids, *, max_new_tokens: int, router_layer: int, threshold=0.5):
    """Greedy continuation of full-length prompts `[batch, P]` (prefilled at full depth) where every new token
    skips the central span its router picks (the batch takes the largest choice of its rows); each block's
    skipped slots are masked from later tokens. Returns (tokens `[batch, max_new_tokens]`, the choice of every
    token after the first `[max_new_tokens - 1]`)."""
    check_model(model, "middle-layer skipping")
    graphdef, params = nnx.split(model)
    return _generate_jit(
        graphdef,
        params,
        router,
        jnp.asarray(prompt_ids, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        router_layer=int(router_layer),
        threshold=float(threshold),
    )

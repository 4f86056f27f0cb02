"""Batched, jit-compiled sampling from a decoder LM with a key/value cache.

Prompts are right-padded to a common length with per-row `prompt_lengths`; every row continues from its own
length. Each step feeds one token per row at that row's position, so rows of different lengths decode together.
Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling; no gradient flows through sampling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def filter_logits(logits, *, top_k: int | None = None, top_p: float | None = None):
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly more likely tokens
        cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def sample_token(logits, rng, *, temperature: float, top_k=None, top_p=None):
    """`logits [batch, vocab]` -> token ids `[batch]`; greedy when temperature == 0."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(graphdef, params, prompt_ids, prompt_lengths, rng, *, max_new_tokens, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_ids.shape
    caches = model.init_cache(batch, prompt_len + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
    logits, caches = model.decode(prompt_ids, positions=positions, caches=caches)
    last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
    first = sample(last, jax.random.fold_in(rng, 0))

    def step(carry, index):
        token, caches = carry
        position = (prompt_lengths + index)[:, None]
        logits, caches = model.decode(token[:, None], positions=position, caches=caches)
        next_token = sample(logits[:, 0], jax.random.fold_in(rng, index + 1))
        return (next_token, caches), token

    (_, _), tokens = jax.lax.scan(step, (first, caches), jnp.arange(max_new_tokens))
    return tokens.T


def generate(model, prompt_ids, prompt_lengths=None, *, max_new_tokens: int, rng=None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None):
    """Continue each prompt by `max_new_tokens` tokens; returns `[batch, max_new_tokens]` int32.

    prompt_ids `[batch, prompt_len]` int (right-padded), prompt_lengths `[batch]` (default: all full length).
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_lengths is None:
        prompt_lengths = jnp.full((prompt_ids.shape[0],), prompt_ids.shape[1], jnp.int32)
    rng = jax.random.key(0) if rng is None else rng
    graphdef, params = nnx.split(model)
    return _generate(graphdef, params, prompt_ids, jnp.asarray(prompt_lengths, jnp.int32), rng,
                     max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k, top_p=top_p)

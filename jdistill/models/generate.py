"""Batched, jit-compiled sampling from a decoder LM with a key/value cache.

Prompts are right-padded to a common length with per-row `prompt_lengths`; every row continues from its own
length. The shared prefix is prefilled at once; then each step feeds one token per row (its prompt token while
it has one, else its sample), so rows of different lengths decode together, for attention and DeltaNet layers.
Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling; no gradient flows through sampling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
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


@functools.partial(
    jax.jit, static_argnames=("graphdef", "prefill_len", "max_new_tokens", "temperature", "top_k", "top_p")
)
def _generate(
    graphdef, params, prompt_ids, prompt_lengths, rng, *, prefill_len, max_new_tokens, temperature, top_k, top_p
):
    model = nnx.merge(graphdef, params)
    batch, width = prompt_ids.shape
    caches = model.init_cache(batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(prefill_len), (batch, prefill_len))
    logits, caches = model.decode(prompt_ids[:, :prefill_len], positions=positions, caches=caches)
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
    rows = jnp.arange(batch)

    def step(carry, position):
        last_logits, caches, out = carry
        sampled = sample(last_logits, jax.random.fold_in(rng, position))
        in_prompt = position < prompt_lengths
        token = jnp.where(in_prompt, prompt_ids[:, jnp.minimum(position, width - 1)], sampled)
        index = position - prompt_lengths  # this row's generated-token index at this position
        keep = (index >= 0) & (index < max_new_tokens)
        out = out.at[rows, jnp.clip(index, 0, max_new_tokens - 1)].set(
            jnp.where(keep, token, out[rows, jnp.clip(index, 0, max_new_tokens - 1)])
        )
        logits, caches = model.decode(token[:, None], positions=jnp.full((batch, 1), position), caches=caches)
        return (logits[:, 0], caches, out), None

    out = jnp.zeros((batch, max_new_tokens), jnp.int32)
    steps = jnp.arange(prefill_len, width + max_new_tokens)
    (_, _, out), _ = jax.lax.scan(step, (logits[:, -1], caches, out), steps)
    return out


def generate(
    model,
    prompt_ids,
    prompt_lengths=None,
    *,
    max_new_tokens: int,
    rng=None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
):
    """Continue each prompt by `max_new_tokens` tokens; returns `[batch, max_new_tokens]` int32.

    prompt_ids `[batch, prompt_len]` int (right-padded), prompt_lengths `[batch]` (default: all full length).
    The common prefix (the shortest prompt) is prefilled in one pass; from there every row advances one token
    per step, taking its own prompt token while it has one and its sample afterwards, so attention caches and
    Gated DeltaNet states see exactly each row's own sequence.
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    lengths = (
        np.full((prompt_ids.shape[0],), prompt_ids.shape[1]) if prompt_lengths is None else np.asarray(prompt_lengths)
    )
    if lengths.min() < 1 or lengths.max() > prompt_ids.shape[1]:
        raise ValueError(f"prompt_lengths must be in [1, {prompt_ids.shape[1]}], got {lengths.tolist()}")
    rng = jax.random.key(0) if rng is None else rng
    graphdef, params = nnx.split(model)
    return _generate(
        graphdef,
        params,
        prompt_ids,
        jnp.asarray(lengths, jnp.int32),
        rng,
        prefill_len=int(lengths.min()),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
    )

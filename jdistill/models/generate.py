"""Batched, jit-compiled sampling from a decoder LM with a key/value cache, with per-row EOS stopping.

Prompts are left-padded (`prompt_mask` True on real tokens, the layout of prompt/completion batches) or
right-padded with per-row `prompt_lengths`. Each row's RoPE positions start at 0 on its first real token and its
padding is never attended, so a row continues exactly as it would alone.

- Attention-only models: the whole (left-padded) prompt block is prefilled in one pass, computing the output
  head at its last position only; then one token per row per step (`lax.while_loop`), writing every row's key
  and value to the same cache slot (`jdistill.nn.kv_cache`: slot = position + the row's padding). Exactly
  `max_new_tokens` tokens are sampled with `max_new_tokens - 1` single-token decode steps, and the loop stops as
  soon as every row has emitted `eos_id`.
- Models with recurrent layers (Gated DeltaNet, ReGLA) carry one state per row that every step advances, so
  padding cannot be skipped there: prompts are right-aligned to each row's own length, the common prefix is
  prefilled, and from there each step feeds every row its own next prompt token or its sample.

After a row emits `eos_id` it emits `pad_id` (default `eos_id`) for the rest of the row; `completion_mask` marks
the real tokens (through the EOS). Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling; no
gradient flows through sampling (callers pass stop_gradient'ed parameters when differentiating around it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.nn.kv_cache import with_offsets


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


def _argmax(x):
    """The first index of the maximum along the last axis, as two plain reductions (XLA's CPU backend runs the
    variadic value-and-index reduction of `jnp.argmax` several times slower)."""
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)
    return jnp.minimum(index, x.shape[-1] - 1)  # all-NaN rows


def sample_token(logits, rng, *, temperature: float, top_k=None, top_p=None):
    """`logits [batch, vocab]` -> token ids `[batch]`; greedy when temperature == 0. Sampling is the Gumbel-max
    trick with the Gumbel noise of `jax.random.categorical` (the same samples for the same key)."""
    if temperature == 0:
        return _argmax(logits).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return _argmax(logits + jax.random.gumbel(rng, logits.shape, logits.dtype)).astype(jnp.int32)


def completion_mask(tokens, eos_id: int | None):
    """True on each row's real generated tokens: everything up to and including its first `eos_id` (everything
    without an `eos_id`). `tokens [batch, new]` -> bool `[batch, new]`."""
    tokens = jnp.asarray(tokens)
    if eos_id is None:
        return jnp.ones(tokens.shape, bool)
    is_eos = (tokens == eos_id).astype(jnp.int32)
    return (jnp.cumsum(is_eos, axis=1) - is_eos) == 0


def _stop(token, done, eos_id: int | None, pad_id: int):
    """(token as emitted, done after it): a finished row emits `pad_id`; emitting `eos_id` finishes a row."""
    if eos_id is None:
        return token, done
    token = jnp.where(done, pad_id, token)
    return token, done | (token == eos_id)


def has_recurrent_layers(model) -> bool:
    """Whether any block of `model` mixes tokens with a recurrent state (Gated DeltaNet, ReGLA)."""
    return any(hasattr(block, "linear_attention") for block in model.blocks)


def _left_padded(model, prompt, prompt_mask, rng, *, max_new_tokens, sample, eos_id, pad_id):
    """Attention-only models: prefill the left-padded block at once, then a while loop of single-token steps."""
    batch, width = prompt.shape
    lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
    offsets = width - lengths
    caches = with_offsets(model.init_cache(batch, width + max_new_tokens - 1), offsets)
    positions = jnp.arange(width)[None, :] - offsets[:, None]  # negative on the padding (never attended)
    logits, caches = model.decode(prompt, positions=positions, caches=caches, last_only=True)
    token, done = _stop(sample(logits[:, 0], jax.random.fold_in(rng, 0)), jnp.zeros((batch,), bool), eos_id, pad_id)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)

    def body(carry):
        step, token, caches, out, done = carry
        logits, caches = model.decode(token[:, None], positions=(lengths + step - 1)[:, None], caches=caches)
        token, done = _stop(sample(logits[:, 0], jax.random.fold_in(rng, step)), done, eos_id, pad_id)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, caches, out, done

    def cond(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[4])

    return jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), token, caches, out, done))[3]


def _row_by_row(model, prompt, lengths, rng, *, prefill_len, max_new_tokens, sample, eos_id, pad_id):
    """Models with recurrent layers: right-padded prompts; prefill the common prefix, then every row advances one
    token per step (its own prompt token while it has one, else its sample)."""
    batch, width = prompt.shape
    caches = model.init_cache(batch, width + max_new_tokens - 1)
    positions = jnp.broadcast_to(jnp.arange(prefill_len), (batch, prefill_len))
    logits, caches = model.decode(prompt[:, :prefill_len], positions=positions, caches=caches, last_only=True)
    rows = jnp.arange(batch)

    def emit(position, last_logits, out, done):
        """The token every row takes at `position` (prompt or sample) and the output with its samples recorded."""
        sampled = sample(last_logits, jax.random.fold_in(rng, position))
        index = position - lengths  # this row's generated-token index at this position
        generated = (index >= 0) & (index < max_new_tokens)
        stopped, new_done = _stop(sampled, done, eos_id, pad_id)
        done = jnp.where(generated, new_done, done)
        token = jnp.where(position < lengths, prompt[:, jnp.minimum(position, width - 1)], stopped)
        slot = jnp.clip(index, 0, max_new_tokens - 1)
        out = out.at[rows, slot].set(jnp.where(generated, token, out[rows, slot]))
        return token, out, done

    def step(carry, position):
        last_logits, caches, out, done = carry
        token, out, done = emit(position, last_logits, out, done)
        logits, caches = model.decode(token[:, None], positions=jnp.full((batch, 1), position), caches=caches)
        return (logits[:, 0], caches, out, done), None

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    init = (logits[:, 0], caches, out, jnp.zeros((batch,), bool))
    last = width + max_new_tokens - 1  # the longest row's last generated position: sampled, never decoded
    (last_logits, _, out, done), _ = jax.lax.scan(step, init, jnp.arange(prefill_len, last))
    return emit(last, last_logits, out, done)[1]


def _right_aligned(prompt, prompt_mask):
    """Left-padded `prompt` -> (right-padded prompt, lengths): each row's real tokens moved to its start."""
    width = prompt.shape[1]
    lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
    source = (jnp.arange(width)[None, :] + (width - lengths)[:, None]) % width
    return jnp.take_along_axis(prompt, source, axis=1), lengths


def _loop_options(max_new_tokens, temperature, top_k, top_p, eos_id, pad_id) -> dict:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    return dict(
        max_new_tokens=max_new_tokens,
        sample=functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p),
        eos_id=eos_id,
        pad_id=(0 if eos_id is None else eos_id) if pad_id is None else pad_id,
    )


def sample_completions(
    model,
    prompt,
    prompt_mask=None,
    *,
    max_new_tokens: int,
    rng,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
):
    """`max_new_tokens` tokens continuing each left-padded prompt; traceable (call it inside a jitted step).

    prompt int `[batch, P]` left-padded, prompt_mask bool `[batch, P]` True on the real tokens (None: all real;
    every row needs at least one). Returns int32 `[batch, max_new_tokens]`; after a row emits `eos_id` the rest of
    it is `pad_id` (default `eos_id`), see `completion_mask`.
    """
    options = _loop_options(max_new_tokens, temperature, top_k, top_p, eos_id, pad_id)
    prompt = jnp.asarray(prompt, jnp.int32)
    mask = jnp.ones(prompt.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if not has_recurrent_layers(model):
        return _left_padded(model, prompt, mask, rng, **options)
    right, lengths = _right_aligned(prompt, mask)
    prefill = prompt.shape[1] if prompt_mask is None else 1  # traced lengths: only the first token is common
    return _row_by_row(model, right, lengths, rng, prefill_len=prefill, **options)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "prefill_len", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id"),
)
def _generate(
    graphdef,
    params,
    prompt,
    mask_or_lengths,
    rng,
    *,
    prefill_len,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    eos_id,
    pad_id,
):
    """Left-padded prompts and a mask (`prefill_len` None), or right-padded prompts and lengths."""
    model = nnx.merge(graphdef, params)
    if prefill_len is None:
        return sample_completions(
            model,
            prompt,
            mask_or_lengths,
            rng=rng,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            pad_id=pad_id,
        )
    options = _loop_options(max_new_tokens, temperature, top_k, top_p, eos_id, pad_id)
    return _row_by_row(model, prompt, mask_or_lengths, rng, prefill_len=prefill_len, **options)


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
    eos_id: int | None = None,
    pad_id: int | None = None,
    prompt_mask=None,
):
    """Continue each prompt by `max_new_tokens` tokens; returns `[batch, max_new_tokens]` int32.

    prompt_ids `[batch, prompt_len]` int, either right-padded with `prompt_lengths [batch]` or left-padded with
    `prompt_mask [batch, prompt_len]` (True on real tokens); neither: every row is full length. Each row is
    continued exactly as it would be alone. With `eos_id`, a row that emits it emits `pad_id` (default `eos_id`)
    afterwards (`completion_mask` gives the real tokens) and decoding stops once every row has.
    """
    prompt = np.asarray(prompt_ids).astype(np.int32)
    batch, width = prompt.shape
    if prompt_lengths is not None and prompt_mask is not None:
        raise ValueError("give prompt_lengths (right-padded prompts) or prompt_mask (left-padded), not both")
    if prompt_mask is not None:
        mask = np.asarray(prompt_mask, bool)
        lengths = mask.sum(1)
        if mask.shape != prompt.shape or not (mask == (np.arange(width) >= width - lengths[:, None])).all():
            raise ValueError("prompt_mask must be [batch, prompt_len], False on left padding and True after it")
    else:
        lengths = np.full((batch,), width) if prompt_lengths is None else np.asarray(prompt_lengths)
    if lengths.min() < 1 or lengths.max() > width:
        raise ValueError(f"prompt lengths must be in [1, {width}], got {lengths.tolist()}")
    rng = jax.random.key(0) if rng is None else rng
    graphdef, params = nnx.split(model)
    options = dict(
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    if not has_recurrent_layers(model):
        if prompt_mask is None:  # right-padded -> left-padded: row b moves right by its padding
            source = (np.arange(width)[None, :] - (width - lengths)[:, None]) % width
            prompt = np.take_along_axis(prompt, source, axis=1)
            mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
        return _generate(graphdef, params, prompt, mask, rng, prefill_len=None, **options)
    if prompt_mask is not None:  # left-padded -> right-padded
        source = (np.arange(width)[None, :] + (width - lengths)[:, None]) % width
        prompt = np.take_along_axis(prompt, source, axis=1)
    lengths = lengths.astype(np.int32)
    return _generate(graphdef, params, prompt, lengths, rng, prefill_len=int(lengths.min()), **options)

"""Early-exit self-speculative decoding (LayerSkip, Elhoushi et al. 2024, "LayerSkip: Enabling Early Exit
Inference and Self-Speculative Decoding"; docs/early_exit.md).

One model drafts and verifies. Each round, for every row:

1. **Draft**: the last accepted token `x_0` and then each drafted token `x_1 .. x_{d-1}` run through the first
   `E = exit_layer` blocks only, one token at a time, with the KV caches of those blocks; the draft head reads
   block E's output and proposes `x_{i+1}` (greedy: its argmax; sampling: a draw from q_i = its softmax at the
   temperature). `x_d` also runs through the first E blocks (its logits are not needed), so the early blocks have
   seen all d + 1 inputs.
2. **Verify**: blocks E+1 .. L run once over the d + 1 hidden states of step 1 (one multi-token pass over the
   KV caches of those blocks) and the output head gives the full model's next-token distributions
   p_0 .. p_d, where p_i predicts the token after x_i. The early blocks' keys and values written while drafting
   are exactly what the full model computes for those blocks (same tokens, same positions): the cache is
   shared, nothing is recomputed.
3. **Accept**: greedy: the longest prefix with x_{i+1} = argmax p_i, then the full model's own token argmax p_k
   at the first mismatch (or after all d drafts); sampling (Leviathan et al. 2023, Chen et al. 2023): x_{i+1}
   is accepted with probability min(1, p_i(x_{i+1}) / q_i(x_{i+1})); at the first rejection a token is drawn
   from norm(max(0, p_i - q_i)); when all d are accepted a bonus token is drawn from p_d. Either way each round
   emits between 1 and d + 1 tokens, and the emitted sequence is distributed exactly as plain sampling from
   the full model (greedy: it is plain greedy decoding's output).

Keys and values of rejected drafts stay in the caches at positions past the row's last accepted token: a query
attends only to slots at or before its own, and the next round overwrites them (`jdistill.nn.kv_cache`). Rows
advance by their own number of accepted tokens (per-row positions). The draft head is the model's exit head at
`exit_layer` when the model has one there (`ModelConfig.exit_layers`), else the final norm and output head
applied to block E's output (LayerSkip's shared head). Attention-only models (a recurrent layer's state cannot
be rolled back past a rejected draft).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.errors import UserError
from jdistill.models.generate import _argmax, has_recurrent_layers
from jdistill.nn.kv_cache import with_offsets

DraftHead = Literal["auto", "exit", "final"]
DraftControl = Literal["fixed", "thompson"]
DraftLoop = Literal["auto", "scan", "unrolled"]


class SpeculativeOptionError(UserError):
    """Self-speculative decoding options that do not fit the model (exit layer, draft length, temperature)."""


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
    """Counters of one `self_speculative_generate` call (summed over rows): rounds (the largest over rows),
    drafted tokens, accepted drafts; `acceptance_rate` = accepted / drafted, `tokens_per_round` = emitted tokens
    per row-round, `mean_draft_len` = drafted tokens per row-round."""

    rounds: int
    drafted: int
    accepted: int
    emitted: int
    row_rounds: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / max(self.row_rounds, 1)

    @property
    def mean_draft_len(self) -> float:
        return self.drafted / max(self.row_rounds, 1)


def check_options(config, *, exit_layer: int, draft_len: int, temperature: float, draft_head: DraftHead) -> str:
    """Raise a one-line `SpeculativeOptionError` for options that do not fit `config`; returns the draft head
    actually used ("exit" or "final")."""
    if config.kind != "lm":
        raise SpeculativeOptionError("self-speculative decoding needs a language model (model.kind=lm)")
    if not isinstance(exit_layer, (int, np.integer)) or not 1 <= exit_layer < config.num_layers:
        raise SpeculativeOptionError(
            f"exit_layer: expected a block number in [1, {config.num_layers - 1}] (the model has "
            f"{config.num_layers} blocks; the draft exit must be shallower than the model), got {exit_layer!r}"
        )
    if not isinstance(draft_len, (int, np.integer)) or draft_len < 1:
        raise SpeculativeOptionError(f"draft_len: expected a positive integer, got {draft_len!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise SpeculativeOptionError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if set(config.layer_pattern) != {"A"}:
        raise SpeculativeOptionError(
            f"self-speculative decoding needs attention-only models (layer_pattern {config.layer_pattern!r} has "
            "recurrent layers, whose state cannot be rolled back past a rejected draft)"
        )
    has_exit = exit_layer in config.exit_layers
    if draft_head == "exit" and not has_exit:
        raise SpeculativeOptionError(
            f"draft_head=exit: the model has no exit at block {exit_layer} (exit_layers {list(config.exit_layers)})"
        )
    if draft_head not in ("auto", "exit", "final"):
        raise SpeculativeOptionError(f"draft_head: expected auto, exit or final, got {draft_head!r}")
    return "exit" if (draft_head == "exit" or (draft_head == "auto" and has_exit)) else "final"


def _run_blocks(blocks, h, positions, caches):
    new = []
    for block, cache in zip(blocks, caches, strict=True):
        h, cache = block.decode(h, positions=positions, cache=cache)
        new.append(cache)
    return h, tuple(new)


def _final_logits(model, h):
    return model._logits(model.final_norm(h))  # the head `Transformer.decode` applies


def _draft_logits(model, h, exit_layer: int, head: str):
    if head == "exit":
        return model.exits.exit_logits(h, exit_layer)
    return _final_logits(model, h)


def _log_probs(logits, temperature: float):
    return jax.nn.log_softmax(logits / temperature, axis=-1)


def _sample(log_probs, key):
    return _argmax(log_probs + jax.random.gumbel(key, log_probs.shape, log_probs.dtype)).astype(jnp.int32)


def _accept_greedy(drafts, target_logits, limit):
    """drafts `[B, d]` (x_1..x_d), target logits `[B, d+1, V]`, only the first `limit` drafts count ->
    (accepted count k [B], next token [B])."""
    best = _argmax(target_logits).astype(jnp.int32)  # [B, d+1]: the full model's token after each x_i
    matches = (drafts == best[:, :-1]) & (jnp.arange(drafts.shape[1]) < limit)[None, :]
    accepted = jnp.sum(jnp.cumprod(matches.astype(jnp.int32), axis=1), axis=1)
    return accepted, jnp.take_along_axis(best, accepted[:, None], axis=1)[:, 0]


def _accept_sampled(drafts, draft_log_probs, target_log_probs, key, limit):
    """Speculative sampling: (accepted count k [B], next token [B]) with the rejection rule of the module
    docstring. draft_log_probs `[B, d, V]` (q_0..q_{d-1}), target_log_probs `[B, d+1, V]` (p_0..p_d); only the
    first `limit` drafts count (after `limit` acceptances the bonus token is drawn from p_limit)."""
    batch, d = drafts.shape
    accept_key, resample_key = jax.random.split(key)
    p_draft = jnp.take_along_axis(target_log_probs[:, :-1], drafts[..., None], axis=2)[..., 0]
    q_draft = jnp.take_along_axis(draft_log_probs, drafts[..., None], axis=2)[..., 0]
    uniform = jax.random.uniform(accept_key, (batch, d))
    ok = jnp.log(uniform) < jnp.minimum(p_draft - q_draft, 0.0)  # u < min(1, p / q)
    ok = ok & (jnp.arange(d) < limit)[None, :]
    accepted = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
    # Residual distribution at the first rejection: norm(max(0, p_k - q_k)); after d acceptances: p_d.
    p_k = jnp.take_along_axis(target_log_probs, accepted[:, None, None], axis=1)[:, 0]
    q_pad = jnp.concatenate([draft_log_probs, jnp.full_like(draft_log_probs[:, :1], -jnp.inf)], axis=1)
    q_k = jnp.take_along_axis(q_pad, accepted[:, None, None], axis=1)[:, 0]
    q_k = jnp.where((accepted >= limit)[:, None], -jnp.inf, q_k)  # all `limit` drafts accepted: sample from p
    residual = jnp.maximum(jnp.exp(p_k) - jnp.exp(q_k), 0.0)
    residual_log = jnp.where(residual > 0, jnp.log(jnp.where(residual > 0, residual, 1.0)), -jnp.inf)
    # If p == q to rounding the residual is empty; p itself is then the right fallback (rejection is impossible).
    empty = jnp.sum(residual, axis=-1, keepdims=True) <= 0
    residual_log = jnp.where(empty, p_k, residual_log)
    return accepted, _sample(residual_log, resample_key)


def draft_costs(num_layers: int, exit_layer: int, draft_len: int) -> np.ndarray:
    """cost(k) of a round with k drafts, k = 1 .. draft_len, in full single-token forward passes: k + 1 passes
    through E of the L blocks, and one verify pass through the other L - E (a pass over k + 1 tokens costs about
    one single-token pass while decoding is bound by reading the weights)."""
    k = np.arange(1, draft_len + 1)
    return ((k + 1) * exit_layer + (num_layers - exit_layer)) / num_layers


def choose_draft_len(key, accepted, rejected, costs):
    """Thompson sampling of the round's draft length (EESD, Liu et al. 2024, "Speculative Decoding via
    Early-exiting for Faster LLM Inference with Thompson Sampling Control Mechanism"), in 1 .. d.

    `accepted[i]`, `rejected[i]` count how often the (i+1)-th draft was accepted / rejected given the ones before
    it were accepted: a Beta(1 + accepted, 1 + rejected) posterior of that acceptance probability. One draw
    theta_i from each gives P(first j drafts accepted) = prod_{i<j} theta_i and expected tokens per round with k
    drafts 1 + sum_{j<=k} P(first j accepted); the length with the most tokens per unit of `costs` is chosen.
    """
    theta = jax.random.beta(key, 1.0 + accepted, 1.0 + rejected)
    expected = 1.0 + jnp.cumsum(jnp.cumprod(theta))
    return (1 + jnp.argmax(expected / costs)).astype(jnp.int32)


def update_posterior(accepted_counts, rejected_counts, accepted, limit, active):
    """The Beta posterior counts after a round: per draft position i, rows that reached it (all earlier drafts
    accepted, i < limit) add an acceptance (i < their accepted count) or a rejection (i = their accepted count)."""
    index = jnp.arange(accepted_counts.shape[0])[None, :]
    rows = active[:, None]
    accepted_counts = accepted_counts + jnp.sum(rows & (index < accepted[:, None]), axis=0)
    rejected_counts = rejected_counts + jnp.sum(rows & (index == accepted[:, None]) & (index < limit), axis=0)
    return accepted_counts, rejected_counts


def _speculative(
    model,
    prompt,
    prompt_mask,
    rng,
    *,
    exit_layer,
    draft_len,
    max_new_tokens,
    temperature,
    head,
    control,
    eos_id,
    pad_id,
    loop="scan",
):
    batch, width = prompt.shape
    d = draft_len
    lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
    offsets = width - lengths
    max_len = width + max_new_tokens + d + 1
    caches = with_offsets(model.init_cache(batch, max_len), offsets)
    early, late = list(model.blocks)[:exit_layer], list(model.blocks)[exit_layer:]
    early_caches, late_caches = caches[:exit_layer], caches[exit_layer:]

    # Prefill the prompt through all blocks; the first new token comes from the full model.
    positions = jnp.arange(width)[None, :] - offsets[:, None]
    h = model.embed(prompt)
    h, early_caches = _run_blocks(early, h, positions, early_caches)
    h, late_caches = _run_blocks(late, h, positions, late_caches)
    first_logits = _final_logits(model, h[:, -1])
    greedy = temperature == 0
    key0, rng = jax.random.split(rng)
    first = _argmax(first_logits).astype(jnp.int32) if greedy else _sample(_log_probs(first_logits, temperature), key0)
    done = jnp.zeros((batch,), bool)
    if eos_id is not None:
        done = first == eos_id
    out = jnp.full((batch, max_new_tokens + d + 1), pad_id, jnp.int32).at[:, 0].set(first)
    count = jnp.ones((batch,), jnp.int32)  # tokens emitted so far; out[:, count - 1] is the last one

    costs = jnp.asarray(draft_costs(len(model.blocks), exit_layer, d), jnp.float32)

    def draft_round(carry):
        rounds, count, done, out, early_caches, late_caches, rng, stats, posterior = carry
        if greedy and control == "fixed":  # no randomness: no key to split each round
            draft_key = accept_key = control_key = rng
        else:
            rng, draft_key, accept_key, control_key = jax.random.split(rng, 4)
        active = (count < max_new_tokens) & ~done
        last = jnp.take_along_axis(out, (count - 1)[:, None], axis=1)[:, 0]
        start = lengths + count - 1  # the position of x_0
        limit = d if control == "fixed" else choose_draft_len(control_key, posterior[0], posterior[1], costs)

        def draft_step(state, i):  # x_i through the first E blocks, and the draft head's x_{i+1}
            token, caches = state
            pos = (start + i)[:, None]
            h, caches = _run_blocks(early, model.embed(token[:, None]), pos, caches)
            logits = _draft_logits(model, h[:, 0], exit_layer, head)
            if greedy:
                log_q = logits
                nxt = _argmax(logits).astype(jnp.int32)
            else:
                log_q = _log_probs(logits, temperature)
                nxt = _sample(log_q, jax.random.fold_in(draft_key, i))
            return (nxt, caches), (h[:, 0], nxt, log_q)

        def idle(state, i):  # past this round's draft length: nothing runs
            del i
            shapes = jax.eval_shape(draft_step, state, 0)[1]
            return state, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        def step(state, i):
            if control == "fixed":
                return draft_step(state, i)
            return jax.lax.cond(i < limit, draft_step, idle, state, i)

        if loop == "unrolled":  # no loop nested in the round (on an accelerator each iteration syncs the host)
            state, steps = (last, early_caches), []
            for i in range(d):
                state, outputs = step(state, i)
                steps.append(outputs)
            early_caches = state[1]
            hidden, drafts, log_q = (jnp.stack(parts, axis=1) for parts in zip(*steps, strict=True))
        else:  # a scan: on XLA:CPU ~5 % faster per round than the unrolled steps (a smaller loop body)
            (_, early_caches), stacked = jax.lax.scan(step, (last, early_caches), jnp.arange(d))
            hidden, drafts, log_q = (jnp.swapaxes(x, 0, 1) for x in stacked)
        # drafts [B, d]: x_1..x_d; hidden [B, d, D]: block E's output for x_0..x_{d-1}
        # The last draft x_limit also goes through the first E blocks (for the verify pass), without the draft head.
        last_draft = drafts[:, d - 1] if control == "fixed" else jnp.take(drafts, limit - 1, axis=1)
        tail, early_caches = _run_blocks(
            early, model.embed(last_draft[:, None]), (start + limit)[:, None], early_caches
        )
        if control == "fixed":
            hidden = jnp.concatenate([hidden, tail], axis=1)
        else:  # x_limit's slot; later slots hold the idle steps' zeros (never accepted)
            hidden = jnp.concatenate([hidden, jnp.zeros_like(tail)], axis=1).at[:, limit].set(tail[:, 0])
        verify_positions = start[:, None] + jnp.arange(d + 1)[None, :]
        h, late_caches = _run_blocks(late, hidden, verify_positions, late_caches)
        target_logits = _final_logits(model, h)  # [B, d+1, V]
        if greedy:
            accepted, correction = _accept_greedy(drafts, target_logits, limit)
        else:
            target_log_probs = _log_probs(target_logits, temperature)
            accepted, correction = _accept_sampled(drafts, log_q, target_log_probs, accept_key, limit)
        if control == "thompson":  # the fixed length reads no posterior
            posterior = update_posterior(posterior[0], posterior[1], accepted, limit, active)
        # Emitted this round: x_1..x_k, then the correction; EOS ends the row (later tokens become pad_id).
        index = jnp.arange(d + 1)[None, :]
        emitted = jnp.where(index < accepted[:, None], jnp.pad(drafts, [(0, 0), (0, 1)]), correction[:, None])
        if eos_id is not None:
            is_eos = emitted == eos_id
            emitted = jnp.where((jnp.cumsum(is_eos, axis=1) - is_eos) > 0, pad_id, emitted)
        valid = (index <= accepted[:, None]) & active[:, None]
        slots = jnp.where(valid, count[:, None] + index, out.shape[1] - 1)  # invalid ones land in the spare tail
        rows = jnp.arange(batch)[:, None]
        out = out.at[rows, slots].set(jnp.where(valid, emitted, out[rows, slots]))
        emitted_count = jnp.where(active, accepted + 1, 0)
        if eos_id is not None:
            done = done | (active & jnp.any((emitted == eos_id) & valid, axis=1))
        stats = stats + jnp.stack(
            [
                jnp.sum(jnp.where(active, limit, 0)),
                jnp.sum(jnp.where(active, accepted, 0)),
                jnp.sum(emitted_count),
                jnp.sum(active.astype(jnp.int32)),
            ]
        )
        return rounds + 1, count + emitted_count, done, out, early_caches, late_caches, rng, stats, posterior

    def keep_going(carry):
        _, count, done, *_ = carry
        return jnp.any((count < max_new_tokens) & ~done)

    stats = jnp.zeros((4,), jnp.int32)
    posterior = (jnp.zeros((d,), jnp.float32), jnp.zeros((d,), jnp.float32))
    carry = (jnp.zeros((), jnp.int32), count, done, out, early_caches, late_caches, rng, stats, posterior)
    rounds, count, done, out, *_, stats, _ = jax.lax.while_loop(keep_going, draft_round, carry)
    out = out[:, :max_new_tokens]
    if eos_id is not None:  # tokens past a row's EOS (emitted in its last round past max_new_tokens) are pad
        is_eos = (out == eos_id).astype(jnp.int32)
        out = jnp.where((jnp.cumsum(is_eos, axis=1) - is_eos) > 0, pad_id, out)
    return out, rounds, stats


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "exit_layer",
        "draft_len",
        "max_new_tokens",
        "temperature",
        "head",
        "control",
        "eos_id",
        "pad_id",
        "loop",
    ),
)
def _generate(graphdef, params, prompt, prompt_mask, rng, **options):
    return _speculative(nnx.merge(graphdef, params), prompt, prompt_mask, rng, **options)


class SpeculativeDecoder:
    """`self_speculative_generate` with the model split once and one compiled program per prompt shape: a
    serving loop calls it per request without re-splitting the model's graph or re-dispatching through `jax.jit`
    (on the `llm_layerskip` model those cost ~15 ms of CPU per call, about half of a 96-token decode). The
    options are those of `self_speculative_generate`; the model's weights are read when the decoder is built.
    `draft_loop` is how a round's d draft steps are compiled: "scan" (a loop nested in the decoding loop) or
    "unrolled" (d copies of the step, one loop iteration per round); "auto": scan on CPU (measured ~5 % faster
    there), unrolled on accelerators, where every loop iteration waits for the host. Both give the same tokens."""

    def __init__(
        self,
        model,
        *,
        exit_layer: int,
        draft_len: int,
        max_new_tokens: int,
        temperature: float = 0.0,
        draft_head: DraftHead = "auto",
        draft_control: DraftControl = "fixed",
        eos_id: int | None = None,
        pad_id: int | None = None,
        draft_loop: DraftLoop = "auto",
    ):
        if has_recurrent_layers(model):
            raise SpeculativeOptionError(
                "self-speculative decoding needs attention-only models (the model has recurrent layers, whose state "
                "cannot be rolled back past a rejected draft)"
            )
        head = check_options(
            model.config, exit_layer=exit_layer, draft_len=draft_len, temperature=temperature, draft_head=draft_head
        )
        if draft_control not in ("fixed", "thompson"):
            raise SpeculativeOptionError(f"draft_control: expected fixed or thompson, got {draft_control!r}")
        if draft_loop not in ("auto", "scan", "unrolled"):
            raise SpeculativeOptionError(f"draft_loop: expected auto, scan or unrolled, got {draft_loop!r}")
        if draft_loop == "auto":
            draft_loop = "scan" if jax.default_backend() == "cpu" else "unrolled"
        if max_new_tokens < 1:
            raise SpeculativeOptionError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
        self.graphdef, self.params = nnx.split(model)
        self.options = dict(
            exit_layer=int(exit_layer),
            draft_len=int(draft_len),
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            head=head,
            control=draft_control,
            eos_id=eos_id,
            pad_id=(0 if eos_id is None else eos_id) if pad_id is None else pad_id,
            loop=draft_loop,
        )
        self._compiled: dict = {}

    def __call__(self, prompt_ids, prompt_mask=None, rng=None):
        """(tokens int32 `[batch, max_new_tokens]`, `SpeculativeStats`) for left-padded `prompt_ids`."""
        prompt = np.asarray(prompt_ids).astype(np.int32)
        mask = np.ones(prompt.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
        rng = jax.random.key(0) if rng is None else rng
        program = self._compiled.get(prompt.shape)
        if program is None:
            lowered = _generate.lower(self.graphdef, self.params, prompt, mask, rng, **self.options)
            program = self._compiled[prompt.shape] = lowered.compile()
        tokens, rounds, stats = program(self.params, prompt, mask, rng)
        drafted, accepted, emitted, row_rounds = (int(x) for x in np.asarray(stats))
        return tokens, SpeculativeStats(int(rounds), drafted, accepted, emitted, row_rounds)


def self_speculative_generate(
    model,
    prompt_ids,
    prompt_mask=None,
    *,
    exit_layer: int,
    draft_len: int,
    max_new_tokens: int,
    rng=None,
    temperature: float = 0.0,
    draft_head: DraftHead = "auto",
    draft_control: DraftControl = "fixed",
    eos_id: int | None = None,
    pad_id: int | None = None,
    draft_loop: DraftLoop = "auto",
):
    """Continue each left-padded prompt by `max_new_tokens` tokens with early-exit self-speculative decoding.

    prompt_ids int `[batch, P]` left-padded, prompt_mask bool `[batch, P]` (None: every token real). Greedy
    (temperature 0) gives plain greedy decoding's tokens (in float32 matmul precision: at a GPU's default TF32 the
    multi-token verify pass and single-token decoding round differently and can flip a near-tie; use
    `JAX_DEFAULT_MATMUL_PRECISION=highest` there); temperature > 0 samples from the full model's distribution at
    that temperature. `draft_control`: "fixed" drafts `draft_len` tokens every round; "thompson"
    picks each round's draft length in 1 .. `draft_len` by Thompson sampling (`choose_draft_len`). Returns
    (tokens int32 `[batch, max_new_tokens]`, `SpeculativeStats`); after a row emits `eos_id` it emits `pad_id`
    (default `eos_id`). `draft_loop`: see `SpeculativeDecoder`. Repeated calls on one model: `SpeculativeDecoder`.
    """
    decoder = SpeculativeDecoder(
        model,
        exit_layer=exit_layer,
        draft_len=draft_len,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        draft_head=draft_head,
        draft_control=draft_control,
        eos_id=eos_id,
        pad_id=pad_id,
        draft_loop=draft_loop,
    )
    prompt = np.asarray(prompt_ids).astype(np.int32)
    mask = np.ones(prompt.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
    tokens, rounds, stats = _generate(
        decoder.graphdef, decoder.params, prompt, mask, jax.random.key(0) if rng is None else rng, **decoder.options
    )
    drafted, accepted, emitted, row_rounds = (int(x) for x in np.asarray(stats))
    return tokens, SpeculativeStats(int(rounds), drafted, accepted, emitted, row_rounds)

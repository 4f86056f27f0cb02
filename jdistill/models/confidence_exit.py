"""Confidence exits at inference: stop at the first exit whose prediction is confident enough
(docs/early_exit.md#confidence-exits).

Exits are the model's exit heads (`ModelConfig.exit_layers`, as the `multi_exit` recipe trains them) followed by
the final head; the model "uses" `exit_layers[i]` blocks at exit i and all of them at the final head. The
confidence of an exit's logits z over C classes (or a vocabulary):

    max_prob:  max_c softmax(z)_c                       (Schwartz et al. 2020, "The Right Tool for the Job")
    entropy:   1 - H(softmax(z)) / log C                (1 for a one-hot prediction, 0 for the uniform one)

both in [0, 1]; an example (a token) exits at the first exit with confidence >= `threshold`, else at the final
head. A threshold above 1 never exits early (the full model); 0 always takes the first exit.

- `calibrate_threshold` picks, on a held-out split, the threshold with the fewest blocks used on average among
  those whose accuracy is at most `max_accuracy_drop` below the full model's.
- Classifiers: `classify_with_exits` runs one batch block by block and skips the remaining blocks (a
  `lax.cond`) as soon as every example of the batch has exited: at batch size 1 each example stops at its own
  exit, so the saving is wall time, not only FLOPs.
- Language models, per token (CALM, Schuster et al. 2022): `generate_with_exits` decodes greedily; at each token the
  blocks after a confident exit are skipped, and their key/value caches are filled from the exit's hidden state
  (each skipped block writes the keys and values its attention computes from that state: the state propagation of
  CALM), so later tokens attend to every layer as usual. The output equals the full forward with every skipped
  (position, block) pair passing its input through (`Transformer(..., layer_keep=[batch, seq, layers])`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.errors import UserError
from jdistill.models.generate import _argmax
from jdistill.nn.kv_cache import with_offsets

Measure = Literal["max_prob", "entropy"]
MEASURES = ("max_prob", "entropy")


class ExitOptionError(UserError):
    """Confidence-exit options that do not fit (threshold, measure, a model without exits)."""


def confidence(logits, measure: str = "max_prob"):
    """The confidence in [0, 1] of `logits [..., C]` (see the module docstring)."""
    log_p = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    if measure == "max_prob":
        return jnp.exp(jnp.max(log_p, axis=-1))
    if measure == "entropy":
        p = jnp.exp(log_p)
        entropy = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
        return 1.0 - entropy / jnp.log(logits.shape[-1])
    raise ExitOptionError(f"measure: expected one of {MEASURES}, got {measure!r}")


def exit_index(confidences, threshold):
    """`confidences [E, ...]` (the last exit is the final head) -> the exit taken `[...]`: the first with
    confidence >= threshold, else the last."""
    confident = confidences >= threshold
    confident = confident.at[-1].set(True)
    return jnp.argmax(confident, axis=0)


def check_options(config, *, threshold: float, measure: str) -> None:
    if not config.exit_layers:
        raise ExitOptionError(
            "confidence exits need a model with exits (model.exit_layers, e.g. the multi_exit recipe)"
        )
    if not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ExitOptionError(f"threshold: expected a number in [0, 1], got {threshold!r}")
    if measure not in MEASURES:
        raise ExitOptionError(f"measure: expected one of {MEASURES}, got {measure!r}")


def calibrate_threshold(exit_logits, labels, layers_used, *, max_accuracy_drop: float, measure: Measure = "max_prob"):
    """(threshold, curve) on a held-out split: `exit_logits [E, N, C]` (every exit, the final head last), `labels
    [N]`, `layers_used [E]` blocks each exit costs. Every distinct confidence (and 1 + eps: the full model) is a
    candidate; the chosen threshold has the fewest mean blocks among those with accuracy >= the full model's -
    `max_accuracy_drop`. `curve`: (threshold, accuracy, mean blocks) of every candidate, for plotting."""
    logits = np.asarray(exit_logits, np.float32)
    correct = np.argmax(logits, axis=-1) == np.asarray(labels)[None, :]  # [E, N]
    confidences = np.asarray(confidence(logits, measure))  # [E, N]
    return calibrate_confidences(confidences, correct, layers_used, max_accuracy_drop=max_accuracy_drop)


def calibrate_confidences(confidences, correct, layers_used, *, max_accuracy_drop: float, candidates: int = 0):
    """`calibrate_threshold` from every exit's confidence `[E, N]` and correctness `[E, N]` (bool). With
    `candidates` > 0 only that many quantiles of the confidences (and 1 + eps) are tried: for millions of
    tokens."""
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise ExitOptionError(f"max_accuracy_drop: expected a fraction in [0, 1], got {max_accuracy_drop!r}")
    confidences, correct = np.asarray(confidences), np.asarray(correct, bool)
    cost = np.asarray(layers_used, np.float64)
    seen = confidences[:-1].ravel()
    if candidates:
        seen = np.quantile(seen, np.linspace(0.0, 1.0, candidates))
    rows = np.arange(confidences.shape[1])
    curve = []
    for threshold in np.unique(np.concatenate([seen, [1.0 + 1e-6]])):
        confident = confidences >= threshold
        confident[-1] = True
        taken = np.argmax(confident, axis=0)  # `exit_index`, in numpy
        curve.append((float(threshold), float(correct[taken, rows].mean()), float(cost[taken].mean())))
    floor = correct[-1].mean() - max_accuracy_drop
    feasible = [row for row in curve if row[1] >= floor - 1e-12]
    return min(feasible, key=lambda row: (row[2], -row[1]))[0], curve


def _classifier_exits(model, inputs, threshold: float, measure: str):
    """Logits `[batch, C]` and the exit taken `[batch]`; blocks after the point where every row has exited are
    skipped."""
    cfg = model.config
    exits = list(cfg.exit_layers)
    h = model._embed(inputs)
    batch = inputs.shape[0]
    logits = jnp.zeros((batch, cfg.num_classes), jnp.float32)
    taken = jnp.full((batch,), len(exits), jnp.int32)
    done = jnp.zeros((batch,), bool)

    def run_segment(state, blocks, exit_number, exit_layer):
        h, logits, taken, done = state
        for block in blocks:
            h = block(h)
        if exit_layer is None:  # the final head
            out = model._logits(model.final_norm(h).mean(axis=1))
            now = ~done
        else:
            out = model.exits.exit_logits(h.mean(axis=1), exit_layer)
            now = ~done & (confidence(out, measure) >= threshold)
        logits = jnp.where(now[:, None], out, logits)
        taken = jnp.where(now, exit_number, taken)
        return h, logits, taken, done | now

    state = (h, logits, taken, done)
    bounds = [0, *exits, cfg.num_layers]
    blocks = list(model.blocks)
    for number in range(len(exits) + 1):
        segment = blocks[bounds[number] : bounds[number + 1]]
        exit_layer = exits[number] if number < len(exits) else None
        run = functools.partial(run_segment, blocks=segment, exit_number=number, exit_layer=exit_layer)
        state = jax.lax.cond(jnp.all(state[3]), lambda s: s, run, state)
    return state[1], state[2]


@functools.partial(jax.jit, static_argnames=("graphdef", "threshold", "measure"))
def _classify(graphdef, params, inputs, *, threshold, measure):
    return _classifier_exits(nnx.merge(graphdef, params), inputs, threshold, measure)


def classify_with_exits(model, inputs, *, threshold: float, measure: Measure = "max_prob"):
    """(logits `[batch, C]`, exit taken `[batch]`: 0 .. len(exit_layers), the last being the final head) of a
    classifier with exits, skipping blocks once every example of the batch has exited."""
    check_options(model.config, threshold=threshold, measure=measure)
    graphdef, params = nnx.split(model)
    return _classify(graphdef, params, jnp.asarray(inputs), threshold=float(threshold), measure=measure)


def lm_exit_logits(model, hidden, layer: int):
    """Logits of the exit at block `layer` from that block's output: the model's exit head there if it has one,
    else the final norm and output head (LayerSkip's shared head, `losses.early_exit_loss`)."""
    if layer in model.config.exit_layers:
        return model.exits.exit_logits(hidden, layer)
    return model._logits(model.final_norm(hidden))


def check_exit_layers(config, exit_layers) -> tuple[int, ...]:
    """The LM exit layers to use: `exit_layers` (strictly increasing, each in [1, num_layers - 1]) or the model's."""
    if exit_layers is None:
        return tuple(config.exit_layers)
    layers = tuple(int(layer) for layer in exit_layers)
    if not layers or any(b <= a for a, b in itertools.pairwise(layers)):
        raise ExitOptionError(f"exit_layers: expected strictly increasing block numbers, got {list(exit_layers)}")
    if not 1 <= layers[0] <= layers[-1] <= config.num_layers - 1:
        raise ExitOptionError(
            f"exit_layers: {list(layers)} leaves [1, {config.num_layers - 1}]"
            f" (the model has {config.num_layers} blocks)"
        )
    return layers


@dataclasses.dataclass(frozen=True)
class ConfidenceRule:
    """The exit rule of confidence exits: exit when every row's confidence reaches `threshold`. An exit rule is
    a hashable callable `rule(model, rule_params, h [batch, d], exit_number, exit_layer) -> (logits, exit now:
    bool scalar)`; `rule_params` is a traced pytree (e.g. JEI-DNN's gates, `jdistill.models.jei_dnn.JEIRule`)."""

    threshold: float
    measure: str = "max_prob"

    def __call__(self, model, rule_params, h, exit_number: int, exit_layer: int):
        del rule_params, exit_number
        logits = lm_exit_logits(model, h, exit_layer)
        return logits, jnp.all(confidence(logits, self.measure) >= self.threshold)


def _lm_rest(model, number, bounds, exits, positions, rule, rule_params, h, caches):
    """The blocks after exit `number - 1` (recursively: the next exit, or the final head)."""
    cfg = model.config
    blocks = list(model.blocks)
    new = list(caches)
    for index in range(bounds[number], bounds[number + 1]):
        h, new[index] = blocks[index].decode(h, positions=positions, cache=new[index])
    caches = tuple(new)
    if number == len(exits):
        return model._logits(model.final_norm(h[:, 0])), caches, jnp.int32(number)
    exit_layer = exits[number]
    logits, take = rule(model, rule_params, h[:, 0], number, exit_layer)

    def fill(h, caches):
        new = list(caches)
        for index in range(exit_layer, cfg.num_layers):
            new[index] = blocks[index].fill_cache(h, positions=positions, cache=new[index])
        return logits, tuple(new), jnp.int32(number)

    rest = functools.partial(_lm_rest, model, number + 1, bounds, exits, positions, rule, rule_params)
    return jax.lax.cond(take, fill, rest, h, caches)


def _generate(model, prompt, *, max_new_tokens: int, rule, rule_params, exits: tuple[int, ...]):
    batch, width = prompt.shape
    caches = with_offsets(model.init_cache(batch, width + max_new_tokens), jnp.zeros((batch,), jnp.int32))
    positions = jnp.broadcast_to(jnp.arange(width), (batch, width))
    logits, caches = model.decode(prompt, positions=positions, caches=caches, last_only=True)
    first = _argmax(logits[:, 0]).astype(jnp.int32)

    def step(carry, index):
        token, caches = carry
        logits, caches, taken = _lm_rest(
            model,
            0,
            [0, *exits, model.config.num_layers],
            list(exits),
            jnp.full((batch, 1), width + index),
            rule,
            rule_params,
            model.embed(token[:, None]),
            caches,
        )
        nxt = _argmax(logits).astype(jnp.int32)
        return (nxt, caches), (nxt, taken, logits)

    (_, _), (tokens, taken, logits) = jax.lax.scan(step, (first, caches), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], tokens.T], axis=1), taken, jnp.swapaxes(logits, 0, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "rule", "exits"))
def _generate_jit(graphdef, params, prompt, rule_params, *, max_new_tokens, rule, exits):
    return _generate(
        nnx.merge(graphdef, params),
        prompt,
        max_new_tokens=max_new_tokens,
        rule=rule,
        rule_params=rule_params,
        exits=exits,
    )


def generate_with_exits(
    model,
    prompt_ids,
    *,
    max_new_tokens: int,
    threshold: float,
    measure: Measure = "max_prob",
    exit_layers=None,
    rule=None,
    rule_params=None,
):
    """Greedy continuation of full-length prompts `[batch, P]` with per-token confidence exits (the batch exits
    together). Returns (tokens int32 `[batch, max_new_tokens]`, the exit taken for every token after the first
    `[max_new_tokens - 1]` (0 .. len(exit_layers), the last being the final head; the first token comes from the
    prefill's full forward), the logits that chose them `[batch, max_new_tokens - 1, vocab]`). `exit_layers`
    (default the model's exit heads): the blocks to exit after; where the model has no exit head the shared final
    norm and head read the block's output (a LayerSkip-trained model, whose early layers predict through it).
    `rule` (with its traced `rule_params`) replaces the confidence rule (`ConfidenceRule`), e.g. JEI-DNN's gates."""
    exits = check_exit_layers(model.config, exit_layers)
    check_options(dataclasses.replace(model.config, exit_layers=exits), threshold=threshold, measure=measure)
    if set(model.config.layer_pattern) != {"A"}:
        raise ExitOptionError("per-token confidence exits need attention-only models (recurrent states cannot skip)")
    if max_new_tokens < 1:
        raise ExitOptionError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    graphdef, params = nnx.split(model)
    return _generate_jit(
        graphdef,
        params,
        jnp.asarray(prompt_ids, jnp.int32),
        rule_params,
        max_new_tokens=int(max_new_tokens),
        rule=ConfidenceRule(float(threshold), measure) if rule is None else rule,
        exits=exits,
    )

"""Per-token confidence exits (CALM-style, `jdistill.models.confidence_exit.generate_with_exits`) in
`jdistill bench early-exit`: quality against blocks used on held-out text, and the wall-time speed-up of greedy
decoding at the threshold calibrated for a quality loss of at most `max_quality_drop` (docs/early_exit.md#benchmark).

Quality is next-token accuracy on the run's held-out windows (teacher-forced): every token takes the first exit
among `exit_layers` (then the full model) whose confidence reaches the threshold. `calibrate_confidences` gives
the (threshold, accuracy, mean blocks) curve and the cheapest threshold whose accuracy is at least
(1 - max_quality_drop) times the full model's. At that threshold greedy decoding of the prompts is timed against
plain greedy decoding (`models.generate.generate`) and against the same exit program with a threshold above every
confidence (no exit: the cost of the checks and branches alone), interleaved over `repeats` rounds (medians).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdistill.bench.early_exit import time_interleaved
from jdistill.models.confidence_exit import calibrate_confidences, confidence, generate_with_exits, lm_exit_logits
from jdistill.models.generate import generate


def exit_confidences(model, batches, exit_layers, measure: str = "max_prob"):
    """(confidence `[E + 1, N]`, correct `[E + 1, N]`) of every exit in `exit_layers` and the final head on the valid
    tokens of `batches` (LM windows with `inputs`, `targets`, `mask`)."""

    @jax.jit
    def per_token(inputs, targets):
        out = model(inputs, return_hidden_states=True)
        logits = [lm_exit_logits(model, out.hidden_states[layer], layer) for layer in exit_layers] + [out.logits]
        stacked = jnp.stack(logits)  # [E + 1, batch, seq, vocab]
        return confidence(stacked, measure), jnp.argmax(stacked, axis=-1) == targets[None]

    confidences, correct = [], []
    for batch in batches:
        conf, right = per_token(jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"]))
        valid = np.asarray(batch["mask"]) > 0
        confidences.append(np.asarray(conf)[:, valid])
        correct.append(np.asarray(right)[:, valid])
    return np.concatenate(confidences, axis=1), np.concatenate(correct, axis=1)


def confidence_exit_benchmark(
    model, batches, prompts, *, exit_layers, new_tokens: int, repeats: int, max_quality_drop: float = 0.01
) -> dict:
    """The figures of the module docstring for `exit_layers` (strictly increasing, < num_layers)."""
    layers = model.config.num_layers
    cost = [*exit_layers, layers]
    confidences, correct = exit_confidences(model, batches, exit_layers)
    full_accuracy = float(correct[-1].mean())
    threshold, curve = calibrate_confidences(
        confidences, correct, cost, max_accuracy_drop=max_quality_drop * full_accuracy, candidates=400
    )
    chosen = next(row for row in curve if row[0] == threshold)
    exit_threshold = min(threshold, 1.0)
    never = 1.0 if threshold <= 1.0 else exit_threshold  # `generate_with_exits` takes thresholds in [0, 1]

    def exits(value):
        def run(prompt):
            tokens, taken, _ = generate_with_exits(
                model, prompt, max_new_tokens=new_tokens, threshold=value, exit_layers=tuple(exit_layers)
            )
            return tokens, np.asarray(taken)

        return run

    contenders = {
        "plain": lambda prompt: (generate(model, prompt, max_new_tokens=new_tokens), None),
        "exits": exits(exit_threshold),
        "exits_never": exits(never),
    }
    seconds, cpu_seconds, outputs = time_interleaved(contenders, prompts, repeats)
    taken = np.concatenate(outputs["exits"][1])
    blocks_used = float(np.mean(np.asarray(cost)[taken]))
    same = [np.array_equal(a, b) for a, b in zip(outputs["exits"][0], outputs["plain"][0], strict=True)]
    return {
        "exit_layers": list(exit_layers),
        "max_quality_drop": max_quality_drop,
        "threshold": threshold,
        "heldout_accuracy_full": full_accuracy,
        "heldout_accuracy": chosen[1],
        "heldout_mean_blocks": chosen[2],
        "decode_mean_blocks": blocks_used,
        "speedup": seconds["plain"] / seconds["exits"],
        "speedup_vs_no_exit": seconds["exits_never"] / seconds["exits"],
        "cpu_speedup": cpu_seconds["plain"] / cpu_seconds["exits"],
        "tokens_per_s": len(prompts) * new_tokens / seconds["exits"],
        "plain_tokens_per_s": len(prompts) * new_tokens / seconds["plain"],
        "exact_match": float(np.mean(same)),
        "curve": [{"threshold": t, "accuracy": a, "mean_blocks": b} for t, a, b in curve],
    }

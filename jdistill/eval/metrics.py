"""Evaluation metrics accumulated as sums over batches: accuracy, NLL, expected calibration error; for LMs also
perplexity and bits per byte.

`prediction_stats` is jit-friendly and returns sums (so batches and hosts add up exactly); `target_bytes` adds the
UTF-8 bytes the scored LM targets stand for; `summarize` turns the summed stats into metrics. Works for
classifiers (`logits [batch, classes]`, `labels [batch]`) and LMs (`logits [batch, seq, vocab]`,
`labels [batch, seq]`) alike. Formulas: docs/evaluation.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

NUM_CALIBRATION_BINS = 15


def token_accuracy(logits, labels, mask=None):
    """Top-1 accuracy over valid positions, sum(correct * mask) / max(sum(mask), 1): the per-step training metric."""
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if mask is None:
        return correct.mean()
    weight = mask.astype(jnp.float32)
    return (correct * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def prediction_stats(logits, labels, mask=None, *, num_bins: int = NUM_CALIBRATION_BINS) -> dict:
    """Sums over valid positions: count, correct, NLL (nats), and per-confidence-bin count/confidence/correct.

    ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): equal-width bins over the top-1
    confidence; ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    weight = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    prediction = jnp.argmax(log_probs, axis=-1)
    correct = (prediction == labels).astype(jnp.float32)
    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    bins = jnp.clip((confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    one_hot_bins = jax.nn.one_hot(bins, num_bins) * weight[..., None]
    flat = lambda x: x.reshape(-1, num_bins).sum(axis=0)
    return {
        "count": weight.sum(),
        "correct": (correct * weight).sum(),
        "nll_sum": (nll * weight).sum(),
        "bin_count": flat(one_hot_bins),
        "bin_confidence": flat(one_hot_bins * confidence[..., None]),
        "bin_correct": flat(one_hot_bins * correct[..., None]),
    }


def target_bytes(targets, mask, byte_lengths) -> int:
    """UTF-8 bytes of the scored targets: sum of `byte_lengths[targets]` where `mask` (everywhere without one).

    `byte_lengths [vocab]` is `Tokenizer.token_byte_lengths()`: the bytes each id stands for, 0 for special tokens
    (EOS), so bits per byte divides by the bytes of the text alone. Host-side integers, exact.
    """
    lengths = np.asarray(byte_lengths, np.int64)[np.asarray(targets)]
    return int(lengths.sum() if mask is None else lengths[np.asarray(mask, bool)].sum())


def add_stats(total: dict | None, stats: dict) -> dict:
    """Add two stats dicts (host-side, float64)."""
    stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    return stats if total is None else {k: total[k] + stats[k] for k in total}


def summarize(stats: dict) -> dict:
    """accuracy, nll (nats per example/token), ece, count; with a `bytes` sum (LMs, see `target_bytes`) also
    perplexity = exp(nll_sum / count) and bits_per_byte = nll_sum / (ln 2 * bytes)."""
    count = max(float(stats["count"]), 1.0)
    gap = np.abs(stats["bin_correct"] - stats["bin_confidence"]).sum()
    metrics = {
        "accuracy": float(stats["correct"]) / count,
        "nll": float(stats["nll_sum"]) / count,
        "ece": float(gap) / count,
        "count": int(stats["count"]),
    }
    if "bytes" in stats:
        with np.errstate(over="ignore"):
            metrics["perplexity"] = float(np.exp(metrics["nll"]))
        text_bytes = float(stats["bytes"])
        metrics["bits_per_byte"] = float(stats["nll_sum"]) / (math.log(2) * text_bytes) if text_bytes else math.nan
        metrics["bytes"] = int(stats["bytes"])
    return metrics

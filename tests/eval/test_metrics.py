"""Accuracy, NLL and ECE against direct numpy computations; batch sums add up exactly."""

import numpy as np

from jdistill.eval import add_stats, prediction_stats, summarize
from jdistill.eval.batch import targets_and_mask
from jdistill.eval.metrics import token_accuracy


def numpy_metrics(logits, labels, mask, bins=15):
    logits = logits[mask]
    labels = labels[mask]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    confidence, prediction = probs.max(-1), probs.argmax(-1)
    correct = prediction == labels
    ece = 0.0
    for b in range(bins):
        in_bin = (confidence >= b / bins) & (confidence < (b + 1) / bins) if b < bins - 1 else confidence >= b / bins
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
    return {"accuracy": correct.mean(), "nll": nll, "ece": ece}


def test_metrics_match_numpy_and_batches_add_up():
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=(200, 7))).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    mask = rng.random(200) < 0.8
    total = None
    for start in range(0, 200, 64):
        part = slice(start, start + 64)
        total = add_stats(total, prediction_stats(logits[part], labels[part], mask[part]))
    got = summarize(total)
    want = numpy_metrics(logits, labels, mask)
    assert got["count"] == mask.sum()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_token_level_metrics_and_bits_per_byte():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    labels = rng.integers(0, 11, (2, 5))
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    got = summarize(dict(prediction_stats(logits, labels, mask), bytes=2 * int(mask.sum())))  # 2 bytes per token
    want = numpy_metrics(logits, labels, mask)
    np.testing.assert_allclose(got["nll"], want["nll"], rtol=1e-5)
    np.testing.assert_allclose(got["bits_per_byte"], want["nll"] / np.log(2) / 2, rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], np.exp(want["nll"]), rtol=1e-5)


def test_perfectly_confident_correct_predictions_have_zero_ece():
    logits = np.eye(4, dtype=np.float32) * 100
    got = summarize(prediction_stats(logits, np.arange(4)))
    assert got["accuracy"] == 1.0 and got["ece"] < 1e-6 and got["nll"] < 1e-6


def test_token_accuracy_counts_valid_positions_only():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(4, 9, 5)), rng.integers(0, 5, (4, 9))
    mask = rng.random((4, 9)) < 0.6
    correct = logits.argmax(-1) == labels
    np.testing.assert_allclose(float(token_accuracy(logits, labels, mask)), correct[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(token_accuracy(logits, labels)), correct.mean(), rtol=1e-6)
    assert float(token_accuracy(logits, labels, np.zeros_like(mask))) == 0.0


def test_targets_and_mask_reads_both_batch_layouts():
    targets, mask, labels = np.arange(6).reshape(2, 3), np.ones((2, 3), bool), np.array([4, 5])
    lm_targets, lm_mask = targets_and_mask({"inputs": targets, "targets": targets + 1, "mask": mask})
    assert (lm_targets == targets + 1).all() and lm_mask is mask
    classifier_labels, no_mask = targets_and_mask({"inputs": targets, "labels": labels, "index": labels})
    assert classifier_labels is labels and no_mask is None

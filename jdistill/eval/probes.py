"""Representation probes on encoder features: a linear probe and a weighted k-NN classifier.

Self-supervised recipes (DINO, random teachers) are judged by how linearly separable and how locally
consistent their features are, not by their head's logits. Features are `ModelOutput.features` (for
classifiers the final-normed, mean-pooled representation the head reads).

- Linear probe: multinomial logistic regression (scikit-learn `LogisticRegression`, L2, C = 1) on
  standardised features, fitted on the probe-train features and scored on the probe-test features.
- k-NN (Wu et al. 2018, as evaluated in DINO, Caron et al. 2021): cosine similarity between L2-normalised
  features; each of the k = 20 nearest training examples votes for its class with weight exp(sim / 0.07);
  the class with the largest total wins.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

KNN_K = 20
KNN_TEMPERATURE = 0.07


def extract_features(model, batches) -> tuple[np.ndarray, np.ndarray]:
    """(features `[n, d]`, labels `[n]`) over classification batches, dropping padding rows (`mask`)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x).features)
    features, labels = [], []
    for batch in batches:
        valid = np.asarray(batch.get("mask", np.ones(len(batch["labels"]), bool)), bool)
        features.append(np.asarray(forward(state, batch["inputs"]), np.float64)[valid])
        labels.append(np.asarray(batch["labels"])[valid])
    return np.concatenate(features), np.concatenate(labels)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *, c: float = 1.0, max_iter: int = 2000) -> float:
    """Accuracy of an L2 logistic-regression probe fitted on (train_x, train_y), scored on the test pair."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(C=c, max_iter=max_iter).fit(scaler.transform(train_x), train_y)
    return float(probe.score(scaler.transform(test_x), test_y))


def knn_predict(
    train_x, train_y, test_x, *, k: int = KNN_K, temperature: float = KNN_TEMPERATURE, num_classes: int | None = None
) -> np.ndarray:
    """Weighted k-NN class predictions `[n_test]` (DINO's vote: weight exp(cos / temperature))."""
    train_x = np.asarray(train_x, np.float64)
    test_x = np.asarray(test_x, np.float64)
    normalise = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = normalise(test_x) @ normalise(train_x).T
    k = min(k, train_x.shape[0])
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(similarity, neighbours, axis=1) / temperature)
    num_classes = num_classes or int(max(np.max(train_y), 0)) + 1
    votes = np.zeros((test_x.shape[0], num_classes))
    np.add.at(votes, (np.arange(test_x.shape[0])[:, None], np.asarray(train_y)[neighbours]), weights)
    return votes.argmax(axis=1)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Accuracy of `knn_predict` on the test pair."""
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    predictions = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    return float(np.mean(predictions == np.asarray(test_y)))


def probe_scores(train_x, train_y, test_x, test_y, *, k: int = KNN_K) -> dict:
    """{"linear_probe_accuracy", "knn_accuracy"} for one train/test split of features."""
    return {
        "linear_probe_accuracy": linear_probe_accuracy(train_x, train_y, test_x, test_y),
        "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k=k),
    }


def probe_metrics(model, eval_batches, rng=None, *, train_batches=None, k: int = KNN_K) -> dict:
    """Linear-probe and k-NN accuracy of `model`'s features.

    With `train_batches` the probes are fitted on their features and scored on `eval_batches` (the usual
    train-split vs test-split protocol). Without them (a recipe's `extra_metrics` only receives the evaluation
    split), the evaluation examples are split in two halves by a permutation drawn from `rng` and the probes are
    cross-fitted: fit on one half, score on the other, both ways, scores averaged (2-fold cross-validation).
    """
    test_x, test_y = extract_features(model, eval_batches)
    if train_batches is not None:
        train_x, train_y = extract_features(model, train_batches)
        return probe_scores(train_x, train_y, test_x, test_y, k=k)
    seed = int(jax.random.randint(rng, (), 0, 2**31 - 1)) if rng is not None else 0
    order = np.random.default_rng(seed).permutation(len(test_y))
    halves = np.array_split(order, 2)
    scores = [probe_scores(test_x[a], test_y[a], test_x[b], test_y[b], k=k) for a, b in (halves, halves[::-1])]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}

"""The label-noise claim's linear setting: a softmax head on frozen features fitted to the xi-mixed target.

Broken on purpose: the L2 term dropped or its weight doubled (the xi = 0 head no longer matches scikit-learn's C = 1
logistic regression), the teacher's logits ignored by the students (xi = 1 no longer reproduces the teacher), the
noise left out of the linear setting's labels, the features not standardised with the training statistics."""

import numpy as np
import pytest

from jdistill.repro.claim import Context
from jdistill.repro.claims import label_noise
from jdistill.repro.linear_head import fit_head, head_logits, standardise


def blobs(n=240, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.standard_normal((n, d)) + 1.5 * np.eye(k, d)[y]
    return x, y


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_xi0_head_is_scikit_learns_l2_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    head = fit_head(x, y, 3, xi=0.0, l2=1.0 / len(y))
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(softmax(head_logits(head, x)), reference.predict_proba(x), atol=2e-4)


def test_student_at_xi1_reproduces_its_teachers_probabilities():
    x, y = blobs(seed=1)
    teacher = fit_head(x, y, 3, xi=0.0, l2=0.05)
    teacher_logits = head_logits(teacher, x)
    student = fit_head(x, y[::-1].copy(), 3, xi=1.0, l2=1e-6, teacher_logits=teacher_logits)  # labels unused at 1
    np.testing.assert_allclose(softmax(head_logits(student, x)), softmax(teacher_logits), atol=5e-3)


def test_features_standardised_with_the_training_statistics():
    train, test = np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([[4.0, 1.0]])
    train_z, test_z = standardise(train, test)
    np.testing.assert_allclose(train_z, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(test_z, [[3.0, 0.0]])


def test_linear_setting_trains_no_job_and_fits_on_the_noisy_labels(monkeypatch, tmp_path, data_dir):
    seen = {}

    def sweep(train_x, noisy_y, test_x, test_y, classes, xis, *, l2, iterations):
        seen.update(train_x=train_x, noisy=noisy_y, test_y=test_y, l2=l2)
        return {xi: 0.5 + 0.01 * xi for xi in xis}

    monkeypatch.setattr("jdistill.repro.linear_head.xi_sweep_accuracies", sweep)
    monkeypatch.setattr(Context, "job", lambda *a, **k: pytest.fail("the linear setting trains no job"))
    context = Context(seed=1, run_dir=tmp_path, overrides=(), params={"noise": 0.5, "setting": "linear"})
    numbers = label_noise.CLAIM.measure(context)
    expected = {f"linear_accuracy_xi{label_noise.tag(xi)}": 0.5 + 0.01 * xi for xi in label_noise.XIS}
    assert numbers == pytest.approx(expected)
    clean = label_noise.train_labels(context.config("xi_sd").data)
    assert np.mean(seen["noisy"] != clean) == pytest.approx(0.5, abs=1e-3)
    assert seen["train_x"].shape == (len(clean), 64) and seen["l2"] == pytest.approx(1 / len(clean))
    np.testing.assert_allclose(seen["train_x"].mean(0), 0, atol=1e-9)


def test_verdict_needs_every_measured_setting():
    net = {f"accuracy_xi{label_noise.tag(xi)}": 0.5 for xi in label_noise.XIS}
    linear = {f"linear_accuracy_xi{label_noise.tag(xi)}": 0.5 for xi in label_noise.XIS}
    assert label_noise.held({**linear, "linear_accuracy_xi2": 0.6})
    assert not label_noise.held({**net, **linear, "linear_accuracy_xi2": 0.6})
    assert label_noise.held({**net, **linear, "linear_accuracy_xi2": 0.6, "accuracy_xi4": 0.6})
    assert not label_noise.held({**linear, "linear_accuracy_xi2": 0.6, "linear_accuracy_xi0p5": 0.7})
    assert not label_noise.held({})

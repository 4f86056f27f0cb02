"""Each claim's measurement (which jobs, which stages, which metrics) with the training replaced by canned
summaries, each verdict on hand-made means, and the kernel-ridge half of teacher-guidance against a direct
computation. The claims' real runs are `-m slow` (test_quick_runs.py).

Broken on purpose: label-noise-xi's noise not given to the teacher, a compare stage's xi off by one entry, the
verdict comparing xi >= 1 instead of xi > 1; born-again's ensemble left out of the verdict; pskd's ECE direction
flipped; random-teacher reading the student's probe for the teacher; the kernel test predictions taken from the
generation's own fit instead of its target."""

import numpy as np
import pytest

from jdistill.repro import get_claim
from jdistill.repro.claim import Context
from jdistill.repro.claims import label_noise, teacher_guidance


class FakeJobs:
    """Context.job replaced: records (config, name, dataset_fns), returns a summary of `metrics(stage)`."""

    def __init__(self, monkeypatch, metrics):
        self.calls = []
        self.metrics = metrics
        monkeypatch.setattr(Context, "job", lambda _context, *args, **kwargs: self.job(*args, **kwargs))

    def job(self, config, name, dataset_fns=None):
        self.calls.append((config, name, dataset_fns))
        stages = ["teacher", "student_scratch", *(f"student_{n}" for n in config.run.compare)]
        stages += [f"student_{config.distill.recipe}"] + [
            f"student_{config.distill.recipe}_gen{k}" for k in range(1, 6)
        ]
        return {stage: self.metrics(config, stage) for stage in stages}


def context(tmp_path, **params):
    return Context(seed=1, run_dir=tmp_path, overrides=(), params=params)


def test_label_noise_trains_one_student_per_xi_on_noisy_labels(monkeypatch, tmp_path, data_dir):
    def metrics(config, stage):
        xi = (
            config.run.compare_distill(stage.removeprefix("student_"), config.distill).options["xi"]
            if (stage.removeprefix("student_") in config.run.compare)
            else config.distill.options.get("xi")
        )
        return {"accuracy": 0.5 + 0.01 * float(xi or 0)}

    jobs = FakeJobs(monkeypatch, metrics)
    numbers = label_noise.CLAIM.measure(context(tmp_path, noise=0.5, setting="net"))
    assert numbers == {f"accuracy_xi{label_noise.tag(xi)}": pytest.approx(0.5 + 0.01 * xi) for xi in label_noise.XIS}
    ((config, _, dataset_fns),) = jobs.calls
    assert config.seed == 1 and not config.run.baseline
    assert set(dataset_fns) == {"teacher", *(label_noise.stage_of(xi) for xi in label_noise.XIS)}


def test_label_noise_verdict_is_best_xi_above_1_against_best_at_most_1():
    means = {f"accuracy_xi{label_noise.tag(xi)}": 0.5 for xi in label_noise.XIS}
    assert not label_noise.held(means)
    assert label_noise.held({**means, "accuracy_xi3": 0.51})
    assert not label_noise.held({**means, "accuracy_xi3": 0.51, "accuracy_xi1": 0.52})


def test_born_again_reads_every_generation_and_the_ensemble(monkeypatch, tmp_path, data_dir):
    from jdistill.repro.claims import born_again

    accuracy = {
        "teacher": 0.90,
        "student_scratch": 0.89,
        **{f"student_born_again_gen{k}": 0.9 + 0.01 * k for k in range(1, 6)},
    }
    FakeJobs(monkeypatch, lambda config, stage: {"accuracy": accuracy.get(stage, 0.0)})
    ensembles = []
    monkeypatch.setattr(born_again, "ensemble_accuracy", lambda run_dir, stages: ensembles.append(stages) or 0.95)
    numbers = born_again.CLAIM.measure(context(tmp_path, generations=3))
    assert ensembles == [[f"student_born_again_gen{k}" for k in (1, 2, 3)]]
    assert numbers == pytest.approx(
        {
            "accuracy_scratch": 0.89,
            "accuracy_gen0": 0.9,
            "accuracy_gen1": 0.91,
            "accuracy_gen2": 0.92,
            "accuracy_gen3": 0.93,
            "accuracy_ensemble": 0.95,
        }
    )
    assert born_again.held(numbers)
    assert not born_again.held({**numbers, "accuracy_ensemble": 0.925})
    assert not born_again.held({**numbers, "accuracy_gen2": 0.905})


def test_pskd_compares_accuracy_and_ece_with_the_ce_stage(monkeypatch, tmp_path, data_dir):
    values = {"student_scratch": {"accuracy": 0.9, "ece": 0.05}, "student_pskd": {"accuracy": 0.92, "ece": 0.03}}
    FakeJobs(monkeypatch, lambda config, stage: values.get(stage, {}))
    claim = get_claim("pskd")
    numbers = claim.measure(context(tmp_path))
    assert numbers == {"accuracy_ce": 0.9, "accuracy_pskd": 0.92, "ece_ce": 0.05, "ece_pskd": 0.03}
    assert claim.held(numbers) and not claim.held({**numbers, "ece_pskd": 0.06})


def test_random_teacher_compares_the_student_with_the_probed_teacher(monkeypatch, tmp_path, data_dir):
    probes = {"teacher": 0.5, "student_random_teacher": 0.6}
    FakeJobs(
        monkeypatch,
        lambda config, stage: {"linear_probe_accuracy": probes.get(stage, 0), "knn_accuracy": probes.get(stage, 0) / 2},
    )
    claim = get_claim("random-teacher")
    numbers = claim.measure(context(tmp_path))
    assert numbers == {
        "teacher_linear_probe_accuracy": 0.5,
        "student_linear_probe_accuracy": 0.6,
        "teacher_knn_accuracy": 0.25,
        "student_knn_accuracy": 0.3,
    }
    assert claim.held(numbers) and not claim.held({**numbers, "student_knn_accuracy": 0.2})


def test_kernel_generations_match_a_direct_computation():
    """alpha = 1 is plain KRR every generation (constant error); alpha = 0 predicts B A^(k-1) y at generation k."""
    from jdistill.losses import krr_operator, krr_query_operator

    plain = teacher_guidance.kernel_errors(0, 1.0, generations=4)
    assert np.allclose(plain, plain[0])
    rng = np.random.default_rng([0, 2023])
    x, _, grid = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40), np.linspace(0, 1, 200)
    y = np.sin(2 * np.pi * x) + 0.3 * rng.standard_normal(40)
    K = teacher_guidance.rbf(x, x)
    A, B = (
        krr_operator(K, teacher_guidance.RIDGE),
        krr_query_operator(teacher_guidance.rbf(grid, x), K, teacher_guidance.RIDGE),
    )
    expected = [np.mean((B @ np.linalg.matrix_power(A, k) @ y - np.sin(2 * np.pi * grid)) ** 2) for k in range(3)]
    assert np.allclose(teacher_guidance.kernel_errors(0, 0.0, generations=3), expected)


def test_digits_kernel_generations_match_a_direct_computation(data_dir):
    """On the digit pixels: alpha = 1 is plain KRR every generation (constant accuracy); alpha = 0 predicts
    argmax(B A^(k-1) Y) at generation k, with the fit / validation split and the median-heuristic length."""
    from scipy.spatial.distance import cdist, pdist

    from jdistill.configs import load_config
    from jdistill.losses import krr_operator, krr_query_operator
    from jdistill.repro.claims.common import pixel_features
    from jdistill.repro.linear_head import standardise

    data = load_config("teacher_guidance").data
    plain, alphas = teacher_guidance.digits_kernel_accuracies(data, 0, 1.0, generations=3)
    assert np.allclose(plain, plain[0]) and 0.9 < plain[0] <= 1.0 and np.allclose(alphas, 1.0)
    train_x, train_y = pixel_features(data, "train")
    test_x, test_y = pixel_features(data, "test")
    train_x, test_x = standardise(train_x, test_x)
    fit = np.random.default_rng([0, 2023]).permutation(len(train_y))[int(0.2 * len(train_y)) :]
    x = train_x[fit]
    length = np.median(pdist(x))
    K, K_test = (np.exp(-cdist(a, x, "sqeuclidean") / (2 * length**2)) for a in (x, test_x))
    A, B = krr_operator(K, 1.0), krr_query_operator(K_test, K, 1.0)
    Y = np.eye(10)[train_y[fit]]
    expected = [np.mean((B @ np.linalg.matrix_power(A, k) @ Y).argmax(1) == test_y) for k in range(3)]
    pure, _ = teacher_guidance.digits_kernel_accuracies(data, 0, 0.0, generations=3)
    assert np.allclose(pure, expected) and expected[2] < expected[0]  # pure SD already loses accuracy


def test_teacher_guidance_verdict_needs_every_setting():
    means = {
        "kernel_mse_pure_best": 0.01,
        "kernel_mse_pure_last": 0.03,
        "kernel_mse_guided_last": 0.02,
        "digits_kernel_accuracy_pure_best": 0.97,
        "digits_kernel_accuracy_pure_last": 0.85,
        "digits_kernel_accuracy_guided_last": 0.98,
        "digits_kernel_alpha_mean": 2.0,
        "digits_accuracy_teacher": 0.9,
        "digits_accuracy_pure_last": 0.9,
        "digits_accuracy_guided_last": 0.91,
    }
    assert teacher_guidance.held(means)
    assert not teacher_guidance.held({**means, "digits_accuracy_guided_last": 0.89})
    assert not teacher_guidance.held({**means, "kernel_mse_guided_last": 0.04})
    assert not teacher_guidance.held({**means, "kernel_mse_pure_last": 0.01})
    assert not teacher_guidance.held({**means, "digits_kernel_accuracy_guided_last": 0.84})
    assert not teacher_guidance.held({**means, "digits_kernel_accuracy_pure_last": 0.97})


def test_attention_sink_trains_one_lm_per_gate_and_reads_its_statistics(monkeypatch, tmp_path, data_dir):
    from jdistill.repro.claims import attention_sink

    bpb = {"none": 2.0, "headwise": 1.9, "elementwise": 1.95}
    FakeJobs(monkeypatch, lambda config, stage: {"bits_per_byte": bpb[config.teacher.model.gate]})
    read = []

    def statistics(run_dir, stage="teacher"):
        read.append(run_dir.name)
        gate = run_dir.name.removeprefix("gate_")
        return {"first_token_share": 0.5 if gate == "none" else 0.1, "max_activation": 40.0 if gate == "none" else 5.0}

    monkeypatch.setattr(attention_sink, "sink_statistics", statistics)
    numbers = attention_sink.CLAIM.measure(context(tmp_path))
    assert read == ["gate_none", "gate_headwise", "gate_elementwise"]
    assert numbers["bits_per_byte_headwise"] == 1.9 and numbers["first_token_share_none"] == 0.5
    assert attention_sink.held(numbers)
    assert not attention_sink.held({**numbers, "bits_per_byte_elementwise": 2.1})
    assert not attention_sink.held({**numbers, "max_activation_headwise": 41.0})


def test_activations_trains_one_lm_per_activation(monkeypatch, tmp_path, data_dir):
    from jdistill.repro.claims import activations

    bpb = {"gelu": 2.0, "silu": 2.01, "xgelu": 1.9, "xsilu": 1.95, "xatlu": 1.97, "golu": 1.99}
    jobs = FakeJobs(monkeypatch, lambda config, stage: {"bits_per_byte": bpb[config.teacher.model.activation]})
    numbers = activations.CLAIM.measure(context(tmp_path))
    assert [name for _, name, _ in jobs.calls] == [f"activation_{a}" for a in bpb]
    assert numbers == {f"bits_per_byte_{a}": value for a, value in bpb.items()}
    assert activations.held(numbers)
    assert not activations.held({**numbers, "bits_per_byte_golu": 2.005})  # worse than gelu, better than silu


@pytest.mark.parametrize(
    ("name", "compare", "metrics", "numbers", "worse"),
    [
        (
            "adr",
            {"onehot_at": {"options": {"lam_start": 0, "lam_end": 0}}},
            {
                "student_onehot_at": {"accuracy": 0.9, "robust_accuracy": 0.5},
                "student_adr": {"accuracy": 0.9, "robust_accuracy": 0.6},
            },
            {
                "accuracy_onehot_at": 0.9,
                "robust_accuracy_onehot_at": 0.5,
                "accuracy_adr": 0.9,
                "robust_accuracy_adr": 0.6,
            },
            {"robust_accuracy_adr": 0.4},
        ),
        (
            "multi-exit",
            {"labels_only": {"distill_weight": 0}},
            {
                "student_labels_only": {"exit1_accuracy": 0.7, "exit2_accuracy": 0.8, "accuracy": 0.9},
                "student_multi_exit": {"exit1_accuracy": 0.75, "exit2_accuracy": 0.85, "accuracy": 0.9},
            },
            {
                "exit1_accuracy_labels": 0.7,
                "exit2_accuracy_labels": 0.8,
                "accuracy_labels": 0.9,
                "exit1_accuracy_distilled": 0.75,
                "exit2_accuracy_distilled": 0.85,
                "accuracy_distilled": 0.9,
            },
            {"accuracy_distilled": 0.89},
        ),
        (
            "quantized",
            {"no_distill": {"distill_weight": 0}},
            {
                "teacher": {"accuracy": 0.97},
                "student_no_distill": {"quantized_accuracy": 0.9},
                "student_quantized": {"quantized_accuracy": 0.92},
            },
            {"teacher_accuracy": 0.97, "quantized_accuracy_no_distill": 0.9, "quantized_accuracy_distilled": 0.92},
            {"quantized_accuracy_distilled": 0.9},
        ),
    ],
)
def test_compare_claims_read_the_recipe_and_its_comparison_stage(
    name, compare, metrics, numbers, worse, monkeypatch, tmp_path, data_dir
):
    jobs = FakeJobs(monkeypatch, lambda config, stage: metrics.get(stage, {}))
    claim = get_claim(name)
    assert claim.measure(context(tmp_path)) == numbers
    ((config, _, _),) = jobs.calls
    assert config.run.compare == compare and not config.run.baseline
    assert claim.held(numbers) and not claim.held({**numbers, **worse})

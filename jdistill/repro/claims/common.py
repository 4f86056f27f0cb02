"""Helpers shared by the digits claims: `--quick` sizes, the stages' metrics, ensembles of trained stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quick_digits(stages: Sequence[str] = ("teacher", "student"), steps: int = 20) -> tuple[str, ...]:
    """Overrides that shrink a digits preset's `stages` to a job of seconds (for `--quick` and the tests)."""
    out = []
    for stage in stages:
        out += [
            f"{stage}.model.d_model=16",
            f"{stage}.model.num_heads=2",
            f"{stage}.model.mlp_dim=32",
            f"{stage}.train.steps={steps}",
            f"{stage}.train.warmup_steps=2",
            f"{stage}.train.eval_every={steps}",
            f"{stage}.train.checkpoint_every={steps}",
            f"{stage}.train.log_every={steps}",
            f"{stage}.train.batch_size=32",
        ]
    return tuple(out)


# LM claims compare variants of the `lm_kd` preset's teacher stage (3 blocks, d 128, 600 steps); the preset's
# student stage is cut to 2 steps (a job always trains its recipe's student; it is not part of those claims).
LM_TEACHER_ONLY = (
    "run.baseline=false",
    "run.sample_tokens=0",
    "student.train.steps=2",
    "student.train.warmup_steps=1",
    "student.train.eval_every=2",
    "student.train.checkpoint_every=2",
)
QUICK_LM_TEACHER = (
    "teacher.model.num_layers=2",
    "teacher.model.d_model=32",
    "teacher.model.mlp_dim=64",
    "teacher.train.steps=20",
    "teacher.train.warmup_steps=2",
    "teacher.train.eval_every=20",
    "teacher.train.checkpoint_every=20",
    "data.eval_max_batches=2",
    "data.eval_batch_size=8",
)


def metric(summary: dict, stage: str, key: str) -> float:
    return float(summary[stage][key])


def train_labels(data_config) -> np.ndarray:
    """The training split's labels in the order of the training batches' `index`."""
    from jdistill.train import inputs

    batches = inputs.eval_batches(data_config, "classifier", split="train")
    return np.concatenate([np.asarray(b["labels"])[np.asarray(b["mask"], bool)] for b in batches])


def pixel_features(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels `[n, 64]`, labels `[n]`) of a digits split, in the order `train_labels` reads (the noise's order)."""
    from jdistill.train import inputs

    pixels, labels = [], []
    for batch in inputs.eval_batches(data_config, "classifier", split=split):
        valid = np.asarray(batch["mask"], bool)
        pixels.append(np.asarray(batch["inputs"], np.float64).reshape(len(valid), -1)[valid])
        labels.append(np.asarray(batch["labels"])[valid])
    return np.concatenate(pixels), np.concatenate(labels)


def ensemble_accuracy(run_dir, stages: Sequence[str]) -> float:
    """Test accuracy of the mean softmax of the trained `stages` of a run (each its newest checkpoint)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.train import inputs
    from jdistill.train.restore import load_stage

    config = None
    probabilities = []
    for stage in stages:
        model, config = load_stage(run_dir, stage)
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda p, x, g=graphdef: jax.nn.softmax(nnx.merge(g, p)(x).logits.astype(jnp.float32)))
        batches = inputs.eval_batches(config.data, "classifier")
        probabilities.append(np.concatenate([np.asarray(forward(params, b["inputs"])) for b in batches]))
    assert config is not None
    batches = inputs.eval_batches(config.data, "classifier")
    labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
    valid = np.concatenate([np.asarray(b["mask"], bool) for b in batches])
    predicted = np.mean(probabilities, axis=0).argmax(-1)
    return float(np.mean(predicted[valid] == labels[valid]))

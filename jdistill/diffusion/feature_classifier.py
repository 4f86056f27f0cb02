"""The `digits-FD` feature network: a digits classifier jdistill trains once, caches, and then only loads.

FID scores images in the features of a fixed Inception network; for the 8x8 digits jdistill plays both roles
itself. `load_or_train()` returns the classifier of `DEFAULT_SETTINGS`: a small gated-attention transformer
classifier (`jdistill.models.Transformer`, 2 blocks, d_model 64, 2x2 patches: the architecture and optimisation of
the default preset's teacher) trained with a fixed seed on the `digits` train split (images in [0, 1], +-1 pixel
random shifts, 2500 AdamW steps of 64 with warm-up and cosine decay, label cross-entropy; 98.3 % test accuracy).
Its penultimate features (`ModelOutput.features`: the final-normed, mean-pooled representation the head reads, 64
numbers) define digits-FD; its argmax predictions give the class accuracy of conditional samples.

Cache: `<cache root>/feature_classifiers/digits-<key>/` holding `weights.npz` and `info.json` (settings, test
accuracy, training seconds). The cache root is `$JDISTILL_CACHE_DIR`, else `$XDG_CACHE_HOME/jdistill`, else
`~/.cache/jdistill`. `<key>` is the first 16 hex digits of the SHA-256 of the settings, the jdistill version and
the parameter tree's names and shapes, so a changed setting, release or architecture trains a new classifier
instead of loading a stale one. Files are written to temporary names and renamed (weights first, then
`info.json`, the marker of a complete entry), under an exclusive lock so that concurrent processes train it once.
docs/diffusion_metrics.md#the-digits-classifier.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdistill.configs.schema import TrainConfig
from jdistill.diffusion.data import to_unit
from jdistill.errors import UserError
from jdistill.io import fs, strict_json
from jdistill.models import ModelConfig, Transformer

CACHE_ENV = "JDISTILL_CACHE_DIR"
CACHE_SUBDIR = "feature_classifiers"
_EVAL_CHUNK = 512


FEATURE_MODEL = ModelConfig(
    kind="classifier", num_layers=2, d_model=64, num_heads=4, mlp_dim=128, gate="headwise", patch_size=2
)


class CacheError(UserError):
    """The classifier's cache directory cannot be written."""


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """What defines the feature network (all of it enters the cache key)."""

    model: ModelConfig = FEATURE_MODEL
    steps: int = 2500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    shift_augment: bool = True
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
        )


DEFAULT_SETTINGS = ClassifierSettings()


@dataclasses.dataclass
class FeatureClassifier:
    """The trained classifier; `info` is its `info.json` (settings, `test_accuracy`, `train_seconds`, `key`)."""

    model: Transformer
    info: dict

    def __post_init__(self):
        graphdef, self._params = nnx.split(self.model)

        @jax.jit
        def forward(params, images):
            output = nnx.merge(graphdef, params)(to_unit(images))
            return output.features, jnp.argmax(output.logits, axis=-1)

        self._forward = forward

    def features_and_predictions(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(features `float64 [n, d]`, predicted classes `int [n]`) of images in [-1, 1], `[n, 8, 8, 1]`."""
        images = np.asarray(images, np.float32).reshape(-1, 8, 8, 1)
        features, predictions = [], []
        for start in range(0, len(images), _EVAL_CHUNK):  # fixed chunk shapes: one compilation per chunk size
            chunk = images[start : start + _EVAL_CHUNK]
            padded = np.pad(chunk, [(0, _EVAL_CHUNK - len(chunk)), (0, 0), (0, 0), (0, 0)])
            chunk_features, chunk_predictions = self._forward(self._params, padded)
            features.append(np.asarray(chunk_features, np.float64)[: len(chunk)])
            predictions.append(np.asarray(chunk_predictions)[: len(chunk)])
        return np.concatenate(features), np.concatenate(predictions)

    def features(self, images) -> np.ndarray:
        return self.features_and_predictions(images)[0]

    def predict(self, images) -> np.ndarray:
        return self.features_and_predictions(images)[1]


def cache_root(configured: str | os.PathLike | None = None) -> pathlib.Path:
    """`configured`, else `$JDISTILL_CACHE_DIR`, else `$XDG_CACHE_HOME/jdistill`, else `~/.cache/jdistill`."""
    if configured:
        return pathlib.Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache").expanduser() / "jdistill"


def _build(settings: ClassifierSettings) -> Transformer:
    """The initial classifier of `settings`, initialised in one compiled program (not op by op)."""
    make = lambda: Transformer(settings.model, rngs=nnx.Rngs(params=jax.random.key(settings.seed)))
    graphdef = nnx.graphdef(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())


def _param_names(params) -> list[tuple[str, tuple[int, ...]]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves]


def cache_key(settings: ClassifierSettings = DEFAULT_SETTINGS) -> str:
    """16 hex digits of SHA-256(settings, jdistill version, parameter names and shapes)."""
    from jdistill import __version__

    abstract = nnx.state(nnx.eval_shape(lambda: _build(settings)))
    text = strict_json.dumps(
        {"settings": dataclasses.asdict(settings), "version": __version__, "params": _param_names(abstract)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_classifier(settings: ClassifierSettings, data_dir=None) -> tuple[Transformer, dict]:
    """Train the classifier of `settings` from scratch on the digits train split; (model, info)."""
    from jdistill.data import classification_train_dataset, load_source
    from jdistill.data.transforms import random_shift
    from jdistill.diffusion.data import digits
    from jdistill.losses import cross_entropy
    from jdistill.train.optim import make_optimizer

    start = time.perf_counter()
    dataset = classification_train_dataset(
        load_source("digits", "train", data_dir),
        seed=settings.seed,
        batch_size=settings.batch_size,
        transform=random_shift() if settings.shift_augment else None,
    )
    model = _build(settings)
    graphdef, params = nnx.split(model)
    optimizer = make_optimizer(settings.train_config())
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, inputs, labels):
        loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(inputs).logits, labels)
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for index in range(settings.steps):
        batch = dataset[index]
        params, opt_state = step(params, opt_state, batch["inputs"], batch["labels"])
    model = nnx.merge(graphdef, params)
    images, labels = digits("test", data_dir)
    accuracy = float((FeatureClassifier(model, {}).predict(images) == labels).mean())
    info = {
        "settings": json.loads(strict_json.dumps(dataclasses.asdict(settings), default=str)),
        "test_accuracy": accuracy,
        "train_seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
    }
    return model, info


def _save(directory: pathlib.Path, model: Transformer, info: dict) -> None:
    leaves = jax.tree.leaves(nnx.state(model))
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(leaf) for leaf in leaves])
    fs.write_bytes_atomic(directory / "weights.npz", buffer.getvalue())
    fs.write_text_atomic(
        directory / "info.json", strict_json.dumps(info, indent=2) + "\n"
    )  # last: the entry is complete


def _load(directory: pathlib.Path, settings: ClassifierSettings) -> FeatureClassifier:
    graphdef, params = nnx.split(_build(settings))
    leaves, treedef = jax.tree.flatten(params)
    with np.load(directory / "weights.npz") as stored:
        loaded = [stored[f"arr_{index}"] for index in range(len(leaves))]
    if [leaf.shape for leaf in loaded] != [leaf.shape for leaf in leaves]:
        raise ValueError(f"{directory}: cached weights do not match the classifier's parameters")
    params = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in loaded])
    info = json.loads((directory / "info.json").read_text())
    return FeatureClassifier(nnx.merge(graphdef, params), info)


def load_or_train(
    settings: ClassifierSettings = DEFAULT_SETTINGS, *, cache_dir=None, data_dir=None, verbose: bool = True
) -> FeatureClassifier:
    """The cached classifier of `settings` (trained here first if the cache has none; see the module docstring)."""
    from jdistill.data.sources import exclusive_lock

    key = cache_key(settings)
    root = cache_root(cache_dir) / CACHE_SUBDIR
    directory = root / f"digits-{key}"
    if (directory / "info.json").is_file():
        return _load(directory, settings)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        raise CacheError(
            f"cache dir {root} is not writable ({error.strerror or error}); set {CACHE_ENV} to a writable directory"
        ) from error
    with exclusive_lock(root, f"digits-{key}"):
        if not (directory / "info.json").is_file():  # another process may have trained it while we waited
            if verbose:
                print(f"jdistill: training the digits-FD classifier once; caching it in {directory}", file=sys.stderr)
            model, info = train_classifier(settings, data_dir)
            directory.mkdir(parents=True, exist_ok=True)
            _save(directory, model, dict(info, key=key))
    return _load(directory, settings)


def classifier_info(classifier: FeatureClassifier) -> dict[str, Any]:
    """The facts the benchmark reports about its feature network."""
    return {key: classifier.info.get(key) for key in ("key", "test_accuracy", "train_seconds")}


@functools.cache
def reward_classifier(seed: int) -> Transformer:
    """A reward model for generators (Hyper-SD's feedback stage, DMD meets RL): the digits classifier of
    `DEFAULT_SETTINGS` trained with `seed` (once, cached like the digits-FD network), whose `logits` score images
    in [0, 1]. Its seed must differ from the digits-FD network's (`reward_seed_problem`): a generator rewarded by
    the network that scores it could raise its score without better samples."""
    return load_or_train(dataclasses.replace(DEFAULT_SETTINGS, seed=seed)).model


def reward_seed_problem(seed: int) -> str | None:
    """Why `seed` cannot seed a reward classifier (None when it can)."""
    if seed == DEFAULT_SETTINGS.seed:
        return f"reward_seed {seed} is the digits-FD network's, which scores the samples"
    return None

"""The digits-FD classifier: trained once with a fixed seed, cached under a key of its settings, then loaded."""

import dataclasses
import os

import numpy as np
import pytest
from flax import nnx

import jdistill
from jdistill.diffusion import feature_classifier as fc
from jdistill.diffusion.data import digits, to_unit
from jdistill.diffusion.metrics import feature_fd
from jdistill.models import ModelConfig

TINY = fc.ClassifierSettings(
    model=ModelConfig(kind="classifier", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, patch_size=4),
    steps=80,
    batch_size=32,
    learning_rate=1e-2,
    warmup_steps=4,
)


@pytest.fixture(scope="module")
def cached(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, fc.load_or_train(TINY, cache_dir=cache, data_dir=data_dir, verbose=False)


def test_trains_once_then_loads_the_same_weights(cached, data_dir, monkeypatch):
    cache, classifier = cached
    entry = cache / fc.CACHE_SUBDIR / f"digits-{fc.cache_key(TINY)}"
    assert sorted(p.name for p in entry.iterdir()) == ["info.json", "weights.npz"]
    assert classifier.info["key"] == fc.cache_key(TINY) and classifier.info["settings"]["steps"] == 80
    assert classifier.info["test_accuracy"] > 0.3  # 80 steps of a tiny model; chance is 0.1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached classifier was trained again")

    monkeypatch.setattr(fc, "train_classifier", no_training)
    again = fc.load_or_train(TINY, cache_dir=cache, data_dir=data_dir)
    images, labels = digits("test", data_dir)
    features, predictions = classifier.features_and_predictions(images)
    np.testing.assert_array_equal(again.features(images), features)
    assert float((predictions == labels).mean()) == classifier.info["test_accuracy"]


def test_features_are_the_penultimate_representation(cached, data_dir):
    _, classifier = cached
    images, _ = digits("train", data_dir)
    images = images[:600]  # more than one evaluation chunk (512), the last one padded
    features, predictions = classifier.features_and_predictions(images)
    output = nnx.jit(lambda model, x: model(x))(classifier.model, to_unit(images))
    assert features.shape == (600, 16) and features.dtype == np.float64
    np.testing.assert_allclose(features, np.asarray(output.features), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictions, np.asarray(output.logits).argmax(-1))
    np.testing.assert_allclose(classifier.features(images[:, :, :, 0].reshape(600, 64)), features, atol=1e-6)


def test_same_seed_same_classifier(cached, data_dir):
    _, classifier = cached
    model, _ = fc.train_classifier(TINY, data_dir)
    images, _ = digits("test", data_dir)
    np.testing.assert_array_equal(fc.FeatureClassifier(model, {}).features(images), classifier.features(images))


def test_cache_key_covers_settings_and_version(monkeypatch):
    key = fc.cache_key(TINY)
    assert len(key) == 16 and fc.cache_key(TINY) == key
    for changed in (dataclasses.replace(TINY, steps=81), dataclasses.replace(TINY, seed=1)):
        assert fc.cache_key(changed) != key
    wider = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, d_model=32))
    assert fc.cache_key(wider) != key
    monkeypatch.setattr(jdistill, "__version__", "9.9.9")
    assert fc.cache_key(TINY) != key


def test_an_incomplete_entry_is_not_loaded(cached, data_dir, tmp_path, monkeypatch):
    entry = tmp_path / fc.CACHE_SUBDIR / f"digits-{fc.cache_key(TINY)}"
    entry.mkdir(parents=True)
    (entry / "weights.npz").write_bytes(b"partial")  # a writer killed before info.json
    _, classifier = cached
    monkeypatch.setattr(fc, "train_classifier", lambda settings, data_dir: (classifier.model, {"test_accuracy": 0.5}))
    loaded = fc.load_or_train(TINY, cache_dir=tmp_path, data_dir=data_dir, verbose=False)
    assert loaded.info == {"test_accuracy": 0.5, "key": fc.cache_key(TINY)}
    assert not list(entry.glob("*.tmp"))


def test_cache_root_and_unwritable_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(fc.CACHE_ENV, str(tmp_path / "env"))
    assert fc.cache_root() == tmp_path / "env" and fc.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(fc.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fc.cache_root() == tmp_path / "xdg" / "jdistill"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(fc.CacheError, match=f"cache dir {blocker}/feature_classifiers is not writable.*JDISTILL_CACHE"):
        fc.load_or_train(TINY, cache_dir=blocker)


@pytest.mark.slow
def test_default_classifier_accuracy_and_the_real_fd_floor(data_dir, tmp_path):
    classifier = fc.load_or_train(cache_dir=os.environ.get(fc.CACHE_ENV) or tmp_path, data_dir=data_dir)
    assert classifier.info["test_accuracy"] >= 0.95
    train, _ = digits("train", data_dir)
    test, _ = digits("test", data_dir)
    floor = feature_fd(classifier.features(test), classifier.features(train))
    noise = np.random.default_rng(0).uniform(-1, 1, test.shape).astype(np.float32)
    assert floor < 0.05 * feature_fd(classifier.features(noise), classifier.features(train))

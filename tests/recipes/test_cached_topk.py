"""Offline teacher cache: round trip, window alignment with the training batches, k = vocab is dense KD, the CLI."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.cli import main
from jdistill.configs import load_config
from jdistill.configs.schema import DataConfig
from jdistill.data import lm_train_dataset, lm_windows
from jdistill.data import teacher_cache as tc
from jdistill.data.packing import PackedWindows
from jdistill.data.tokenized import TokenizedSplit, tokenize_source
from jdistill.errors import ConfigError, DataError
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation
from jdistill.recipes.cached_topk import CachedTopK
from jdistill.train.job import run_job
from jdistill.train.step import make_loss_and_grad
from jdistill.train.teacher_cache import CacheSettings, write_cache

SEQ = 8


def _windows(tmp_path, num_docs=40, seed=0) -> PackedWindows:
    """Packed windows of `num_docs` random documents over the bytes 1..31 (tokenised with the bytes tokenizer)."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / f"raw{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_docs):
        (folder / f"{index:03d}.txt").write_bytes(bytes(rng.integers(1, 32, rng.integers(5, 40)).tolist()))
    out = tmp_path / f"tokenized{seed}"
    tokenize_source(f"files:{folder}/*.txt", "bytes", out, splits=["train", "test"], progress=False)
    return PackedWindows(TokenizedSplit(out, "train"), SEQ)


def _synthetic_cache(out, windows: PackedWindows, window_ids, k=3, dtype="float32"):
    """ids[..., j] = (input token + j) % 256 and logprobs[..., 0] = -window: checkable against the batch rows."""

    def records():
        for w in window_ids:
            tokens = windows.tokens(w)
            ids = (tokens[:-1, None].astype(np.int32) + np.arange(k)) % 256
            logprobs = np.full((SEQ, k), -1.0 - w, np.float32)
            yield tokens, ids, logprobs

    return tc.write_teacher_cache(
        out,
        records(),
        window_ids,
        seq_len=SEQ,
        top_k=k,
        vocab_size=256,
        split="train",
        logprob_dtype=dtype,
        records_per_shard=4,
    )


def test_cache_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    window_ids = np.array([0, 3, 5, 9, 12])
    fields = [
        (rng.integers(0, 256, SEQ + 1), rng.integers(0, 300, (SEQ, 4)), (-rng.random((SEQ, 4)) * 20).astype(np.float32))
        for _ in window_ids
    ]
    for dtype, tolerance in (("float32", 0.0), ("float16", 1e-2)):
        metadata = tc.write_teacher_cache(
            tmp_path / dtype,
            iter(fields),
            window_ids,
            seq_len=SEQ,
            top_k=4,
            vocab_size=300,
            split="train",
            logprob_dtype=dtype,
            records_per_shard=2,
            extra_metadata={"temperature": 2.0},
        )
        cache = tc.TeacherCache(tmp_path / dtype)
        assert len(metadata["files"]) == 3 and metadata["id_dtype"] == "uint16"
        assert cache.metadata["vocab_size"] == 300 and cache.metadata["tokenizer"] == "bytes"
        assert cache.metadata["temperature"] == 2.0 and cache.metadata["num_tokens"] == 5 * SEQ
        payload = (2 * (SEQ + 1) + SEQ * 4 * (2 + np.dtype(dtype).itemsize)) / SEQ  # uint16 tokens and ids, log-probs
        assert metadata["payload_bytes_per_token"] == payload
        assert metadata["bytes_per_token"] > 0  # files this small are mostly array_record's fixed overhead
        rows = cache.rows([9, 0])
        for row, index in zip(range(2), (3, 0), strict=True):
            np.testing.assert_array_equal(rows["tokens"][row], fields[index][0])
            np.testing.assert_array_equal(rows["ids"][row], fields[index][1])
            np.testing.assert_allclose(rows["logprobs"][row], fields[index][2], atol=tolerance, rtol=tolerance)
        assert rows["ids"].dtype == np.int32
    with pytest.raises(DataError, match="window 4 is not in the teacher cache"):
        cache.rows([3, 4])
    (tmp_path / "float32" / tc.METADATA).unlink()
    with pytest.raises(DataError, match="not a complete teacher cache"):
        tc.TeacherCache(tmp_path / "float32")


def test_attached_batches_carry_the_teacher_of_their_own_windows(tmp_path):
    windows = _windows(tmp_path)
    _synthetic_cache(tmp_path / "all", windows, np.arange(len(windows)))
    dataset = lm_train_dataset(windows, seed=3, batch_size=4)
    cache = tc.TeacherCache(tmp_path / "all")
    attached = tc.attach_teacher_cache(dataset, cache, num_windows=len(windows), seed=3, batch_size=4, top_k=2)
    steps = 3 * len(windows) // 4  # three epochs
    for batch in attached[5:steps].to_iter_dataset():
        assert batch["teacher_topk_ids"].shape == (4, SEQ, 2) and batch["teacher_topk_ids"].dtype == np.int32
        np.testing.assert_array_equal(batch["teacher_topk_ids"][..., 0], batch["inputs"])
        np.testing.assert_array_equal(batch["teacher_topk_ids"][..., 1], (batch["inputs"] + 1) % 256)
        starts = -batch["teacher_topk_logprobs"][:, 0, 0] - 1  # the window index each row was given
        for row, window in enumerate(starts.astype(int)):
            np.testing.assert_array_equal(batch["inputs"][row], windows[window]["inputs"])
    # a cache of just the windows the first 6 steps read serves those steps, and no others
    _synthetic_cache(tmp_path / "visited", windows, tc.visited_windows(len(windows), 6, seed=3, batch_size=4))
    partial = tc.attach_teacher_cache(
        dataset, tc.TeacherCache(tmp_path / "visited"), num_windows=len(windows), seed=3, batch_size=4
    )
    assert len(list(partial[:6].to_iter_dataset())) == 6
    with pytest.raises(DataError, match="not in the teacher cache"):
        [partial[step] for step in range(6, steps)]
    # a cache of other windows (another stream) is caught by the token check
    other = _windows(tmp_path, seed=1)
    _synthetic_cache(tmp_path / "other", other, np.arange(len(other)))
    mismatched = tc.attach_teacher_cache(
        dataset, tc.TeacherCache(tmp_path / "other"), num_windows=len(windows), seed=3, batch_size=4
    )
    with pytest.raises(DataError, match="do not match"):
        mismatched[0]


LM = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32)


@functools.cache
def _teacher_and_student():
    return nnx.split(Transformer(LM, rngs=nnx.Rngs(1))), nnx.split(Transformer(LM, rngs=nnx.Rngs(0)))


def _cached_batch(tmp_path, k, dtype="float32", temperature=2.0):
    (teacher_graphdef, teacher_params), _ = _teacher_and_student()
    windows = _windows(tmp_path)
    write_cache(
        teacher_graphdef,
        teacher_params,
        windows,
        np.arange(len(windows)),
        tmp_path / f"k{k}",
        CacheSettings(k, temperature, dtype),
        split="train",
        metadata={},
    )
    dataset = lm_train_dataset(windows, seed=0, batch_size=4)
    return tc.attach_teacher_cache(
        dataset, tc.TeacherCache(tmp_path / f"k{k}"), num_windows=len(windows), seed=0, batch_size=4
    )[1]


def test_at_k_equal_to_the_vocabulary_the_loss_is_dense_kd(tmp_path):
    (teacher_graphdef, teacher_params), (graphdef, params) = _teacher_and_student()
    batch = _cached_batch(tmp_path, k=32)
    common = dict(temperature=2.0, distill_weight=0.7, label_weight=0.3)
    (total, count), _, _, grads = jax.jit(make_loss_and_grad(graphdef, CachedTopK(top_k=32, **common), None))(
        params, (), None, batch, jax.random.key(0)
    )
    dense_batch = {key: batch[key] for key in ("inputs", "targets", "mask", "segment_ids", "positions")}
    (d_total, d_count), _, _, d_grads = jax.jit(
        make_loss_and_grad(graphdef, KnowledgeDistillation(**common), teacher_graphdef)
    )(params, (), teacher_params, dense_batch, jax.random.key(0))
    np.testing.assert_allclose(total / count, d_total / d_count, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(d_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    sparse = _cached_batch(tmp_path, k=4)
    (s_total, s_count), _, _, _ = jax.jit(make_loss_and_grad(graphdef, CachedTopK(top_k=4, **common), None))(
        params, (), None, sparse, jax.random.key(0)
    )
    assert abs(float(s_total / s_count - d_total / d_count)) > 1e-3
    with pytest.raises(ConfigError, match="no teacher cache"):
        CachedTopK().loss(None, None, (), dense_batch, None)


TINY_LM = [
    f"{stage}.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("model.d_model", 16),
        ("model.num_layers", 1),
        ("model.mlp_dim", 32),
        ("train.steps", 3),
        ("train.warmup_steps", 1),
        ("train.eval_every", 3),
        ("train.log_every", 3),
        ("train.checkpoint_every", 3),
        ("train.batch_size", 4),
    )
] + [
    "data.seq_len=32",
    "data.eval_batch_size=4",
    "data.eval_max_batches=1",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
]


@pytest.mark.slow  # ~14 s quietly; moved out of the default suite for its 15-minute budget (session 9)
def test_cli_writes_the_cache_and_reports_bytes_per_token(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "cache-teacher",
                "--config",
                "cached_topk",
                "--run-dir",
                str(run),
                "--top-k",
                "4",
                "--split",
                "test",
                *TINY_LM,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    cache = tc.TeacherCache(run / "teacher_cache")
    meta = cache.metadata
    assert f"{meta['bytes_per_token']:.1f} bytes per token" in printed
    test_windows = lm_windows(DataConfig(name="pystdlib_text", dir=str(data_dir), seq_len=32), "test")
    assert meta["num_windows"] == len(test_windows) and meta["split"] == "test" and meta["top_k"] == 4
    assert meta["teacher"]["model"]["d_model"] == 16 and meta["logprob_dtype"] == "float16"
    assert 0 < meta["bytes_per_token"] < 2 * meta["payload_bytes_per_token"]  # array_record may compress
    assert (run / "teacher" / "checkpoints").is_dir()
    # a second call loads the run's trained teacher: the top 2 are the first two of the top 4
    assert (
        main(["cache-teacher", "--run-dir", str(run), "--out", str(tmp_path / "k2"), "--top-k", "2", "--split", "test"])
        == 0
    )
    top2, top4 = tc.TeacherCache(tmp_path / "k2").rows([0, 7]), cache.rows([0, 7])
    np.testing.assert_array_equal(top2["ids"], top4["ids"][..., :2])
    np.testing.assert_array_equal(top2["logprobs"], top4["logprobs"][..., :2])


def test_preset_learns_from_its_cache_and_reuses_it(tmp_path, untrained):
    config = load_config("cached_topk", TINY_LM + ["run.baseline=false"])
    summary = run_job(config, tmp_path / "run", progress=False)
    assert summary["student_cached_topk"]["bits_per_byte"] < untrained(config)["bits_per_byte"] - 0.05  # 3 steps: 0.1
    meta = tc.read_metadata(tmp_path / "run" / "teacher_cache")
    assert meta["top_k"] == 8 and meta["num_windows"] <= 3 * 4 and meta["job"]["steps"] == 3
    cache_dir = f"distill.options.cache_dir={tmp_path / 'run' / 'teacher_cache'}"
    again = run_job(
        load_config("cached_topk", TINY_LM + ["run.baseline=false", cache_dir]), tmp_path / "again", progress=False
    )
    assert "teacher" not in again and not (tmp_path / "again" / "teacher").exists()
    bits = summary["student_cached_topk"]["bits_per_byte"]
    assert again["student_cached_topk"]["bits_per_byte"] == pytest.approx(bits)

"""LM evaluation: perplexity, bits per byte and token accuracy of a tiny decoder over masked targets equal a float64
numpy reference (an independent transformer), and do not depend on how the split is cut into batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.eval import prediction_stats, summarize
from jdistill.eval.metrics import target_bytes
from jdistill.models import ModelConfig, Transformer
from jdistill.text import load_tokenizer
from jdistill.train.evaluation import evaluate
from jdistill.train.step import make_eval_step
from tests.numpy_transformer import lm_logits, log_softmax, randomize

VOCAB = 12
CONFIG = ModelConfig(
    kind="lm",
    num_layers=1,
    d_model=8,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    mlp_dim=16,
    vocab_size=VOCAB,
    max_seq_len=16,
    attention_impl="xla",
)
# UTF-8 bytes per id, as a subword tokenizer's: id 0 is a special token (EOS, no bytes), the others 1 to 4 bytes.
BYTE_LENGTHS = np.array([0, 1, 1, 2, 3, 1, 4, 2, 1, 1, 3, 2], np.int32)
ROWS, SEQ = 10, 9


@pytest.fixture(scope="module")
def model_and_reference():
    graphdef, state = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))
    pure = randomize(nnx.to_pure_dict(state), np.random.default_rng(0), scale=0.5)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return graphdef, state, jax.tree.map(lambda x: np.asarray(x, np.float64), pure)


def _split():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, (ROWS, SEQ + 1)).astype(np.int32)
    mask = rng.random((ROWS, SEQ)) < 0.7
    mask[3] = False  # a row with nothing scored
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _batches(split, size):
    """The split cut into batches of `size` rows, the last padded with unscored rows (as the eval pipeline does)."""
    for start in range(0, ROWS, size):
        batch = {key: value[start : start + size] for key, value in split.items()}
        pad = size - len(batch["inputs"])
        yield {
            key: np.concatenate([value, np.zeros((pad, *value.shape[1:]), value.dtype)]) for key, value in batch.items()
        }


def _numpy_reference(reference, split, byte_lengths):
    log_probs = log_softmax(lm_logits(reference, split["inputs"], CONFIG))
    nll = -np.take_along_axis(log_probs, split["targets"][..., None], axis=-1)[..., 0][split["mask"]]
    correct = (log_probs.argmax(-1) == split["targets"])[split["mask"]]
    text_bytes = byte_lengths[split["targets"]][split["mask"]].sum()
    return {
        "perplexity": math.exp(nll.mean()),
        "bits_per_byte": nll.sum() / math.log(2) / text_bytes,
        "accuracy": correct.mean(),
        "count": int(split["mask"].sum()),
        "bytes": int(text_bytes),
    }


@pytest.mark.parametrize("batch_size", [3, 7])
def test_lm_metrics_equal_a_numpy_reference_at_any_batch_size(model_and_reference, batch_size):
    graphdef, params, reference = model_and_reference
    split = _split()
    got = evaluate(make_eval_step(graphdef), params, _batches(split, batch_size), kind="lm", byte_lengths=BYTE_LENGTHS)
    want = _numpy_reference(reference, split, BYTE_LENGTHS)
    assert got["count"] == want["count"] and got["bytes"] == want["bytes"]
    for key in ("perplexity", "bits_per_byte", "accuracy"):
        np.testing.assert_allclose(got[key], want[key], rtol=2e-6, err_msg=key)


def test_batch_size_does_not_change_the_numbers(model_and_reference):
    graphdef, params, _ = model_and_reference
    step, split = make_eval_step(graphdef), _split()
    small, large = (
        evaluate(step, params, _batches(split, size), kind="lm", byte_lengths=BYTE_LENGTHS) for size in (3, 7)
    )
    assert small["count"] == large["count"] and small["bytes"] == large["bytes"]
    for key in ("perplexity", "bits_per_byte", "accuracy", "nll"):
        assert small[key] == pytest.approx(large[key], rel=1e-6), key


def test_byte_level_bits_per_byte_leave_the_end_of_document_token_out():
    """Bytes tokenizer: every id is one byte except EOS (0), which is scored (its NLL counts) but is no text."""
    lengths = load_tokenizer("bytes").token_byte_lengths()
    assert lengths.shape == (256,) and lengths[0] == 0 and (lengths[1:] == 1).all()
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 256)).astype(np.float32)
    targets = np.array([[104, 105, 0, 97, 98, 99], [0, 120, 121, 122, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)
    stats = dict(prediction_stats(logits, targets, mask), bytes=target_bytes(targets, mask, lengths))
    got = summarize(stats)
    assert got["count"] == 11 and got["bytes"] == 11 - 3  # three scored EOS targets
    assert got["bits_per_byte"] == pytest.approx(float(stats["nll_sum"]) / math.log(2) / 8, rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(got["nll"]), rel=1e-12)


def test_lm_evaluation_defaults_to_the_byte_tokenizer_and_classifiers_get_no_lm_metrics():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 4, 256)).astype(np.float32)
    batch = {
        "inputs": np.zeros((1, 4), np.int32),
        "targets": np.array([[65, 0, 66, 67]]),
        "mask": np.ones((1, 4), bool),
    }
    step = lambda params, batch: prediction_stats(logits, batch["targets"], batch["mask"])
    assert evaluate(step, None, [batch], kind="lm")["bytes"] == 3
    classifier = summarize(prediction_stats(logits[0], np.array([1, 2, 3, 4])))
    assert "perplexity" not in classifier and "bits_per_byte" not in classifier


def test_no_text_bytes_give_nan_bits_per_byte():
    stats = dict(prediction_stats(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), np.int32)), bytes=0)
    assert math.isnan(summarize(stats)["bits_per_byte"])

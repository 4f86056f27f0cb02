"""The confidence-exit part of `jdistill bench early-exit` on a tiny random LM: per-token confidences and
correctness of every exit against a direct computation, and the calibrated threshold at the two ends of the
quality budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.bench.early_exit_confidence import confidence_exit_benchmark, exit_confidences
from jdistill.models import ModelConfig, Transformer

LM = ModelConfig(kind="lm", num_layers=4, d_model=16, num_heads=2, mlp_dim=32, vocab_size=7, max_seq_len=32)


def _batches():
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 4, 13), 0, 7))
    mask = np.ones((4, 12), bool)
    mask[0, 8:] = False  # padding is left out
    return [{"inputs": t[:, :-1], "targets": t[:, 1:], "mask": mask} for t in tokens]


def test_exit_confidences_are_each_blocks_output_through_the_shared_head():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    batches = _batches()
    conf, correct = exit_confidences(model, batches, (1, 3))
    assert conf.shape == correct.shape == (3, 2 * 48 - 2 * 4)
    want_conf, want_correct = [], []
    for batch in batches:
        hidden = model(jnp.asarray(batch["inputs"]), return_hidden_states=True).hidden_states
        valid = batch["mask"]
        rows = []
        for layer in (1, 3, 4):
            p = np.asarray(jax.nn.softmax(model._logits(model.final_norm(hidden[layer]))))
            rows.append((p.max(-1)[valid], (p.argmax(-1) == batch["targets"])[valid]))
        want_conf.append(np.stack([r[0] for r in rows]))
        want_correct.append(np.stack([r[1] for r in rows]))
    np.testing.assert_allclose(conf, np.concatenate(want_conf, 1), rtol=1e-5)
    np.testing.assert_array_equal(correct, np.concatenate(want_correct, 1))


@pytest.mark.slow  # three compiled decoders; the confidences and the calibration have fast tests
def test_the_calibrated_exits_respect_the_quality_budget():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    batches = _batches()
    prompts = [np.asarray(batches[0]["inputs"][1, :5], np.int32)]
    # any loss allowed: every token takes the first exit, on held-out text and when decoding
    free = confidence_exit_benchmark(
        model, batches, prompts, exit_layers=(1, 2), new_tokens=4, repeats=1, max_quality_drop=1.0
    )
    assert free["heldout_mean_blocks"] == 1.0 and free["decode_mean_blocks"] == 1.0
    assert free["threshold"] == min(row["threshold"] for row in free["curve"])
    assert free["speedup"] > 0 and 0.0 <= free["exact_match"] <= 1.0
    full = max(row["mean_blocks"] for row in free["curve"])  # the curve ends at the full model
    assert full == 4.0 and free["heldout_accuracy_full"] == next(
        row["accuracy"] for row in free["curve"] if row["mean_blocks"] == full
    )

"""A packed batch through a real LM: each document's logits equal the document run alone (attention never crosses
documents, RoPE restarts per document), with the XLA and the fused (Pallas, interpreted on CPU) attention."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.data.packing import PackedWindows
from jdistill.eval.batch import lm_kwargs
from jdistill.models import ModelConfig, Transformer
from tests.data.lm_fixtures import tokenized_split

TEXTS = ["def f(x):\n    return x", "import os", "class A:\n    pass\n"]


def tiny_lm(impl: str) -> Transformer:
    config = ModelConfig(
        kind="lm", num_layers=2, d_model=32, num_heads=2, mlp_dim=64, vocab_size=256, gate="headwise",
        qk_norm=True, attention_impl=impl,
    )  # fmt: skip
    return Transformer(config, rngs=nnx.Rngs(0))


def packed_batch(tmp_path, texts, seq_len=64):
    split = tokenized_split(tmp_path, [{"text": text} for text in texts])
    window = PackedWindows(split, seq_len, include_partial_tail=True)[0]  # every document fits in window 0
    return {key: value[None] for key, value in window.items()}


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_packed_logits_equal_each_document_run_alone(tmp_path, impl):
    model = tiny_lm(impl)
    forward = nnx.jit(lambda model, inputs, kwargs: model(inputs, **kwargs).logits)
    batch = packed_batch(tmp_path, TEXTS)
    packed = np.asarray(forward(model, batch["inputs"], lm_kwargs(batch))[0])
    segments = batch["segment_ids"][0]
    assert segments.max() == len(TEXTS) and (segments == 0).any()  # three documents and some padding
    # Each document (with its EOS) alone at the start of its own row, plain causal attention from position 0; the
    # zeros after it cannot reach it.
    alone = np.zeros((len(TEXTS), segments.size), np.int32)
    for row, number in enumerate(range(1, len(TEXTS) + 1)):
        tokens = batch["inputs"][0, segments == number]
        alone[row, : tokens.size] = tokens
    alone_logits = np.asarray(forward(model, alone, {}))
    for row, number in enumerate(range(1, len(TEXTS) + 1)):
        length = int((segments == number).sum())
        np.testing.assert_allclose(packed[segments == number], alone_logits[row, :length], atol=2e-5, rtol=2e-5)


def test_attention_never_crosses_documents(tmp_path):
    model = tiny_lm("xla")
    first = packed_batch(tmp_path / "a", TEXTS)
    edited = packed_batch(tmp_path / "b", ["def g(y):\n    return y", *TEXTS[1:]])  # document 1 changed, same length
    assert not np.array_equal(first["inputs"], edited["inputs"])
    forward = nnx.jit(lambda model, inputs, kwargs: model(inputs, **kwargs).logits)
    logits = [np.asarray(forward(model, b["inputs"], lm_kwargs(b))[0]) for b in (first, edited)]
    later = first["segment_ids"][0] >= 2
    np.testing.assert_allclose(logits[0][later], logits[1][later], atol=1e-6)
    assert not np.allclose(logits[0][~later], logits[1][~later])


def test_lm_kwargs_passes_only_the_packing_fields_present():
    batch = {"inputs": 1, "targets": 2, "mask": 3, "segment_ids": 4, "positions": 5}
    assert lm_kwargs(batch) == {"segment_ids": 4, "positions": 5}
    assert lm_kwargs({"inputs": 1, "labels": 2}) == {}
    assert jax.tree.leaves(lm_kwargs({"inputs": 1, "positions": 5})) == [5]

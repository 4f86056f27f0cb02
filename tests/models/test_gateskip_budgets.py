"""GateSkip at inference with per-layer token budgets: each block skips the tokens under its own budget's
quantile, the others run as in the full model."""

import jax
import numpy as np
import pytest
from flax import nnx

from jdistill.models import ModelConfig, Transformer

LM = ModelConfig(kind="lm", num_layers=3, d_model=16, num_heads=2, mlp_dim=32, vocab_size=40, residual_gates=True)


def test_per_layer_budgets_skip_only_in_their_own_block():
    model = Transformer(LM, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(4), (4, 10), 0, 40)
    full = model(tokens, return_hidden_states=True).hidden_states
    last_only = model(tokens, skip_budget=[None, 0.0, 0.5], return_hidden_states=True).hidden_states
    for layer in (0, 1, 2):  # the embedding and blocks 1 and 2 run in full
        np.testing.assert_allclose(last_only[layer], full[layer], atol=1e-6)
    assert not np.allclose(last_only[3], full[3], atol=1e-4)
    # the same budget everywhere is the single budget
    np.testing.assert_allclose(
        model(tokens, skip_budget=[0.5, 0.5, 0.5]).logits, model(tokens, skip_budget=0.5).logits, atol=1e-6
    )
    with pytest.raises(ValueError, match="one budget per block"):
        model(tokens, skip_budget=[0.5, 0.5])

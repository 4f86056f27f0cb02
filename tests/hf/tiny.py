"""Tiny random-weight Llama / Qwen3-architecture decoders for the checkpoint tests (weights far from their init, so
that logits are far from uniform and a wrong weight shows)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jdistill.models import Transformer
from jdistill.models.config import ModelConfig

LLAMA = dict(
    kind="lm",
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    mlp="glu",
    activation="silu",
    mlp_bias=False,
    gate="none",
    max_seq_len=64,
    rope_theta=10000.0,
    norm_eps=1e-6,
    head_bias=False,
)
QWEN3 = dict(LLAMA, qk_norm=True, rope_theta=1000000.0)


def tiny_config(architecture: str = "qwen3", **changes) -> ModelConfig:
    base = {"qwen3": QWEN3, "llama": LLAMA}[architecture]
    return ModelConfig(**{**base, "num_layers": 4, "vocab_size": 64, **changes})


def tiny_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A Transformer of `config` with N(0, 0.15^2) weights and RMSNorm scales 1 + N(0, 0.2^2)."""
    model = Transformer(config, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed + 100)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    values = [
        (1.0 if "norm" in jax.tree_util.keystr(path) else 0.0)
        + (0.2 if "norm" in jax.tree_util.keystr(path) else 0.15) * rng.normal(size=leaf.shape)
        for path, leaf in flat
    ]
    treedef = jax.tree.structure(state)
    nnx.update(model, jax.tree.unflatten(treedef, [jax.numpy.asarray(v, jax.numpy.float32) for v in values]))
    return model


def token_batch(vocab: int, shape=(2, 11), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)

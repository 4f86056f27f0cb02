"""The classic two-layer feed-forward block (the GLU forms are `jdistill.nn.activations.GLUMLP`)."""

from __future__ import annotations

from flax import nnx

from jdistill.nn.activations import EXPANDED, ExpandedGatingActivation, get_activation


class MLP(nnx.Module):
    """`W_out act(W_in x)`: [batch, seq, d_model] -> same. The expanded-range activations (xgelu, xsilu, xatlu)
    carry one trainable alpha per block, initialised 0."""

    def __init__(self, d_model: int, mlp_dim: int, activation: str, *, use_bias: bool = True, dtype=None,
                 rngs: nnx.Rngs):
        self.activation = ExpandedGatingActivation(activation) if activation in EXPANDED else \
            get_activation(activation)
        self.up = nnx.Linear(d_model, mlp_dim, use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(mlp_dim, d_model, use_bias=use_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down(self.activation(self.up(x)))

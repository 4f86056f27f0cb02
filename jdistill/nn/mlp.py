"""Feed-forward blocks: the classic two-layer MLP and the gated linear unit forms (GLUMLP)."""

from __future__ import annotations

from flax import nnx

from jdistill.nn.activations import EXPANDED, GATES, ExpandedGatingActivation, get_activation, get_gate, glu


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


class GLUMLP(nnx.Module):
    """Gated MLP `down(glu(gate(x), up(x)))`: `[..., d_model] -> [..., d_model]`.

    `activation` names the gate (see `GATES`); the expanded kinds carry their own trainable alpha. order 2 with
    "silu" is Llama's SwiGLU `down(silu(gate(x)) * up(x))`; order 1 is the first-order GLU `g(xW) * (xV)`.
    No biases by default.
    """

    def __init__(self, d_model: int, hidden: int, activation: str = "silu", *, order: int = 2,
                 use_bias: bool = False, dtype=None, rngs: nnx.Rngs):
        if order not in (1, 2):
            raise ValueError(f"GLU order must be 1 or 2, got {order!r}")
        self.order = order
        self.activation = activation
        get_gate(activation)  # validates the name
        self.gating = ExpandedGatingActivation(activation) if activation in EXPANDED else None
        linear = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.gate = nnx.Linear(d_model, hidden, **linear)
        self.up = nnx.Linear(d_model, hidden, **linear)
        self.down = nnx.Linear(hidden, d_model, **linear)

    def __call__(self, x):
        gate_fn = self.gating.gate if self.gating is not None else GATES[self.activation]
        return self.down(glu(self.gate(x), self.up(x), gate_fn, self.order))

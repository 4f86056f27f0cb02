"""Feed-forward blocks: the classic two-layer MLP and the gated linear unit forms (GLUMLP)."""

from __future__ import annotations

from flax import nnx

from jdistill.nn.activations import EXPANDED, GATES, ExpandedGatingActivation, get_activation, get_gate, glu
from jdistill.nn.mlp_core import dense_mlp
from jdistill.nn.params import dense


class MLP(nnx.Module):
    """`W_out act(W_in x)`: [batch, seq, d_model] -> same. The expanded-range activations (xgelu, xsilu, xatlu)
    carry one trainable alpha per block, initialised 0. The fixed activations run through `dense_mlp` (same
    values, a hand-written backward that is faster on CPU)."""

    def __init__(
        self, d_model: int, mlp_dim: int, activation: str, *, use_bias: bool = True, dtype=None, rngs: nnx.Rngs
    ):
        self.activation = ExpandedGatingActivation(activation) if activation in EXPANDED else get_activation(activation)
        self.up = dense(d_model, mlp_dim, ("embed", "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.down = dense(mlp_dim, d_model, ("mlp", "embed"), use_bias=use_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        if isinstance(self.activation, ExpandedGatingActivation):
            return self.down(self.activation(self.up(x)))
        up, down = self.up, self.down
        weights = (
            up.kernel[...],
            up.bias[...] if up.bias is not None else None,
            down.kernel[...],
            down.bias[...] if down.bias is not None else None,
        )
        x, *promoted = up.promote_dtype((x, *weights), dtype=up.dtype)
        return dense_mlp(self.activation, x, *promoted)


class GLUMLP(nnx.Module):
    """Gated MLP `down(glu(gate(x), up(x)))`: `[..., d_model] -> [..., d_model]`.

    `activation` names the gate (see `GATES`); the expanded kinds carry their own trainable alpha. order 2 with
    "silu" is Llama's SwiGLU `down(silu(gate(x)) * up(x))`; order 1 is the first-order GLU `g(xW) * (xV)`.
    No biases by default.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        activation: str = "silu",
        *,
        order: int = 2,
        use_bias: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if order not in (1, 2):
            raise ValueError(f"GLU order must be 1 or 2, got {order!r}")
        self.order = order
        self.activation = activation
        get_gate(activation)  # validates the name
        self.gating = ExpandedGatingActivation(activation) if activation in EXPANDED else None
        linear = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.gate = dense(d_model, hidden, ("embed", "mlp"), **linear)
        self.up = dense(d_model, hidden, ("embed", "mlp"), **linear)
        self.down = dense(hidden, d_model, ("mlp", "embed"), **linear)

    def __call__(self, x):
        gate_fn = self.gating.gate if self.gating is not None else GATES[self.activation]
        return self.down(glu(self.gate(x), self.up(x), gate_fn, self.order))

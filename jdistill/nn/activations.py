"""MLP activations and their gated-linear-unit forms.

Every activation here is `x * g(x)` for a gate function `g` with values in [0, 1]:

  - GELU (Hendrycks & Gimpel 2016): g = Phi(x), the normal CDF ("gelu_exact"); "gelu" is the tanh
    approximation `0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, as `jax.nn.gelu` computes it.
  - SiLU (Elfwing et al. 2018): g = sigmoid(x).
  - ATLU: g = arctan(x) / pi + 1/2.
  - GoLU (Gompertz linear unit, Das et al. 2025): g = exp(-exp(-x)), the Gompertz function.

Expanded gating ranges (Huang 2024, "Expanded Gating Ranges Improve Activation Functions") stretch the gate
to [-alpha, 1 + alpha]: `g_alpha = g (1 + 2 alpha) - alpha`, activation `x * g_alpha(x)` (xGELU, xSiLU,
xATLU), with alpha a trainable scalar per MLP block initialised 0, so alpha = 0 is the base activation.

GLU forms, with gate projection `xW` and up projection `xV`:
  - first order: `g(xW) * (xV)` (sigmoid gate = the original GLU of Dauphin et al. 2017);
  - second order: `(xW * g(xW)) * (xV)` = `act(xW) * (xV)` (silu gate = SwiGLU, as in Llama and Qwen).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.nn.params import param

# exp(-exp(7)) = exp(-1096.6) is 0 in float64 (and so in float32 and bfloat16), so clamping x at -7 before the
# double exponential leaves every GoLU value unchanged while keeping exp(-x) (and the gradient) finite.
_GOMPERTZ_CLAMP = -7.0


def expand_gate(gate, alpha):
    """`g_alpha = g (1 + 2 alpha) - alpha`: maps a [0, 1] gate onto [-alpha, 1 + alpha] (Huang 2024)."""
    return gate * (1 + 2 * alpha) - alpha


def normal_cdf_gate(x):
    """Phi(x) = 1/2 erfc(-x / sqrt 2), written as `jax.nn.gelu(approximate=False)` writes it."""
    return 0.5 * jax.lax.erfc(-jnp.asarray(x) * math.sqrt(0.5))


def tanh_gelu_gate(x):
    """The tanh approximation of Phi(x) used by `jax.nn.gelu` (approximate=True)."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * (x**3))))


def arctan_gate(x):
    """`arctan(x) / pi + 1/2`, the ATLU gate."""
    return jnp.arctan(x) / math.pi + 0.5


def gompertz_gate(x):
    """`exp(-exp(-x))`, with x clamped at -7 where the value is already 0 in every float dtype."""
    return jnp.exp(-jnp.exp(-jnp.maximum(x, _GOMPERTZ_CLAMP)))


def xgelu(x, alpha=0.0):
    """xGELU: `x * (Phi(x) (1 + 2 alpha) - alpha)`; alpha = 0 is the exact (erf) GELU."""
    return x * expand_gate(normal_cdf_gate(x), alpha)


def xsilu(x, alpha=0.0):
    """xSiLU: `x * (sigmoid(x) (1 + 2 alpha) - alpha)`; alpha = 0 is SiLU."""
    return x * expand_gate(jax.nn.sigmoid(x), alpha)


def xatlu(x, alpha=0.0):
    """xATLU: `x * ((arctan(x) / pi + 1/2) (1 + 2 alpha) - alpha)`; alpha = 0 is ATLU."""
    return x * expand_gate(arctan_gate(x), alpha)


def atlu(x):
    """ATLU: `x * (arctan(x) / pi + 1/2)`."""
    return xatlu(x)


def golu(x):
    """GoLU (Das et al. 2025, "Gompertz Linear Units"): `x * exp(-exp(-x))`.

    GoLU(0) = 0 and GoLU'(0) = 1/e. Value and gradient are finite for any finite x (x = -1e4 included), in
    float32 and bfloat16, because exp(-x) is evaluated at max(x, -7).
    """
    return x * gompertz_gate(x)


GATES: dict[str, Callable] = {
    "gelu": tanh_gelu_gate,
    "gelu_exact": normal_cdf_gate,
    "silu": jax.nn.sigmoid,
    "atlu": arctan_gate,
    "golu": gompertz_gate,
    "xgelu": normal_cdf_gate,
    "xsilu": jax.nn.sigmoid,
    "xatlu": arctan_gate,
}
EXPANDED = ("xgelu", "xsilu", "xatlu")

ACTIVATIONS: dict[str, Callable] = {
    "gelu": jax.nn.gelu,
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "atlu": atlu,
    "golu": golu,
    "xgelu": xgelu,
    "xsilu": xsilu,
    "xatlu": xatlu,
}


def get_activation(name: str) -> Callable:
    """`x -> x * g(x)` by name; the expanded ones ("xgelu", "xsilu", "xatlu") with alpha = 0."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def get_gate(name: str) -> Callable:
    """The gate g of activation `name`, so that `get_activation(name)(x) == x * get_gate(name)(x)`."""
    if name not in GATES:
        raise ValueError(f"activation must be one of {sorted(GATES)}, got {name!r}")
    return GATES[name]


def glu(gate_input, up_input, gate_fn: Callable, order: int):
    """GLU of the given order: 1 -> `g(xW) * (xV)`; 2 -> `(xW * g(xW)) * (xV)`."""
    if order not in (1, 2):
        raise ValueError(f"GLU order must be 1 or 2, got {order!r}")
    gated = gate_fn(gate_input)
    if order == 2:
        gated = gate_input * gated
    return gated * up_input


class ExpandedGatingActivation(nnx.Module):
    """`x * g_alpha(x)` with one trainable scalar alpha (float32, initialised 0); `kind` in xgelu/xsilu/xatlu."""

    def __init__(self, kind: str):
        if kind not in EXPANDED:
            raise ValueError(f"expanded activation must be one of {list(EXPANDED)}, got {kind!r}")
        self.kind = kind
        self.alpha = param(jnp.zeros((), jnp.float32), ())

    def gate(self, x):
        return expand_gate(GATES[self.kind](x), self.alpha[...].astype(x.dtype))

    def __call__(self, x):
        return x * self.gate(x)

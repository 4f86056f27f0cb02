"""Sparse mixture-of-experts feed-forward layer (Qwen3-MoE / Qwen3-Next): a top-k softmax router, SwiGLU experts,
an optional sigmoid-gated shared expert, dropless dispatch, and the router's auxiliary losses (docs/moe.md).

For tokens x_t (`[T, d]` after flattening the leading axes), router weights W_r `[d, E]`:

    p_t = softmax(x_t W_r)                              router probabilities over the E experts (float32)
    S_t = top-k indices of p_t,  w_te = p_te (/ sum_{e' in S_t} p_te' when norm_topk_prob)
    y_t = sum_{e in S_t} w_te * FFN_e(x_t)  [+ sigmoid(x_t w_s) * FFN_s(x_t)]    (shared expert, Qwen3-Next)
    FFN_e(x) = (silu(x G_e) * (x U_e)) D_e              G_e, U_e `[d, f]`, D_e `[f, d]`

Dispatch is dropless (no capacity factor, no token is dropped): `moe_ragged` sorts the T * k (token, expert)
assignments by expert and runs each projection as one grouped matmul (`jax.lax.ragged_dot`, group sizes = tokens
per expert), then unsorts and combines with the weights; `moe_one_hot` runs every expert on every token and keeps
the routed ones (E times the work: the reference the tests compare against).

Auxiliary losses (metrics, or terms a recipe adds):
  - load balancing (Switch Transformer, Fedus et al. 2021, eq. 4-6; transformers' `load_balancing_loss_func` of
    Qwen3-MoE): `L_lb = E * sum_e f_e P_e`, f_e = (assignments to e) / T (sums to k), P_e = mean_t p_te. It is k
    under uniform routing (its minimum) and E when every token puts all its probability on the same k experts.
  - router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): `L_z = mean_t (logsumexp_e x_t W_r)^2`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.nn.activations import GATES, glu
from jdistill.nn.mlp import GLUMLP
from jdistill.nn.moe_blocked import moe_blocked
from jdistill.nn.params import dense, param
from jdistill.partitioning import current_rules, mesh_axes_of


def route(logits, top_k: int, norm_topk_prob: bool):
    """Top-k routing of router `logits [T, E]`: (weights [T, k] float32, experts [T, k] int32), the k largest
    softmax probabilities per token in decreasing order, renormalised to sum to 1 when `norm_topk_prob`."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts.astype(jnp.int32)


def _swiglu(gate, up, gate_fn=GATES["silu"]):
    return glu(gate, up, gate_fn, 2)


def _ragged_dot(x, w, group_sizes):
    """`x [M, d]` whose rows are sorted into E consecutive groups of `group_sizes [E]` rows, times `w [E, d, f]`:
    row r of group e is `x_r @ w[e]` (`jax.lax.ragged_dot`); rows past sum(group_sizes) are zero."""
    return jax.lax.ragged_dot(x, w, group_sizes)


# The grouped matmul of the sorted dispatch (`impl="ragged_dot"`). A benchmark or test may replace this module
# attribute while it traces the layer: a replaced one is then used on every platform (see `moe_ragged`).
grouped_matmul = _ragged_dot


def _sort_by_expert(experts, num_experts: int):
    """(order [T*k]: assignment indices sorted by expert (stable), group_sizes [E] int32)."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return order, group_sizes


def _expert_ffn_ragged_dot(x, experts, w_gate, w_up, w_down):
    """FFN_{experts[t, j]}(x_t) for every assignment, `[T, k, d]`: sorted rows, three grouped matmuls, unsorted."""
    tokens, k = experts.shape
    order, group_sizes = _sort_by_expert(experts, w_gate.shape[0])
    rows = x[order // k]  # [T*k, d] the token of each sorted assignment
    hidden = _swiglu(grouped_matmul(rows, w_gate, group_sizes), grouped_matmul(rows, w_up, group_sizes))
    out = grouped_matmul(hidden, w_down, group_sizes)  # [T*k, d], sorted order
    return out[jnp.argsort(order)].reshape(tokens, k, -1)  # assignment order


def _experts_sharded() -> bool:
    """Whether the current mesh splits the "expert" logical axis (expert parallelism): the partitioner then splits
    `ragged_dot` by expert groups and moves tokens, where the blocked scan would gather every expert's weights."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    return any(mesh.shape.get(axis, 1) > 1 for axis in mesh_axes_of(current_rules().get("expert")))


def _moe_ragged_dot(x, weights, experts, w_gate, w_up, w_down):
    out = _expert_ffn_ragged_dot(x, experts, w_gate, w_up, w_down)
    return jnp.einsum("tkd,tk->td", out, weights.astype(out.dtype))


GROUPED = {"ragged_dot": _moe_ragged_dot, "blocked": moe_blocked}


def moe_ragged(x, weights, experts, w_gate, w_up, w_down, *, impl: str | None = None):
    """Dropless routed experts: `x [T, d]`, routing `weights [T, k]` and `experts [T, k]`, expert weights
    `w_gate, w_up [E, d, f]`, `w_down [E, f, d]` -> `[T, d]`, sum_j weights[t, j] * FFN_{experts[t, j]}(x_t).

    The T * k assignments are sorted by expert (token t's j-th at row t * k + j before sorting), each projection is
    one grouped matmul over the sorted rows, and the rows are put back in assignment order for the weighted sum.
    `impl`: "ragged_dot" (`jax.lax.ragged_dot`: a native grouped matmul on TPU / GPU) or "blocked"
    (`jdistill.nn.moe_blocked`: expert-padded blocks; XLA's CPU backend expands ragged_dot into E dense masked
    matmuls, E times the work); None picks "blocked" when compiled for CPU or an NVIDIA GPU (where ragged_dot
    measured ~30x slower than a dense matmul of the same work, jax 0.11 on an H200), "ragged_dot" for TPU
    (`jax.lax.platform_dependent`) and under expert parallelism (docs/moe.md#dispatch)."""
    if impl is None and (grouped_matmul is not _ragged_dot or _experts_sharded()):
        impl = "ragged_dot"  # a replaced grouped matmul (see `grouped_matmul`), or expert parallelism
    if impl is None:  # by the platform compiled for (an ahead-of-time TPU compile on a CPU host gets ragged_dot)
        return jax.lax.platform_dependent(
            x,
            weights,
            experts,
            w_gate,
            w_up,
            w_down,
            cpu=GROUPED["blocked"],
            cuda=GROUPED["blocked"],
            default=GROUPED["ragged_dot"],
        )
    return GROUPED[impl](x, weights, experts, w_gate, w_up, w_down)


def moe_one_hot(x, weights, experts, w_gate, w_up, w_down):
    """The same as `moe_ragged` by dense dispatch: every expert runs on every token, and the `[T, E]` combine
    matrix (the routing weights scattered by one-hot expert masks, zero for experts not chosen) mixes them."""
    combine = jnp.einsum("tk,tke->te", weights.astype(x.dtype), jax.nn.one_hot(experts, w_gate.shape[0], dtype=x.dtype))
    hidden = _swiglu(jnp.einsum("td,edf->tef", x, w_gate), jnp.einsum("td,edf->tef", x, w_up))
    return jnp.einsum("tef,efd,te->td", hidden, w_down, combine)


def load_balancing_loss(router_probs, experts, num_experts: int):
    """Switch / Qwen3-MoE load-balancing loss `E * sum_e f_e P_e` of `router_probs [T, E]` (softmax) and the chosen
    `experts [T, k]`: f_e = (assignments to expert e) / T, P_e = mean_t router_probs[t, e]. Only P carries a
    gradient. Minimum k (uniform routing); E when every token puts all its probability on the same k experts."""
    tokens = router_probs.shape[0]
    fraction = jnp.zeros((num_experts,), jnp.float32).at[experts.reshape(-1)].add(1.0) / tokens
    mean_prob = jnp.mean(router_probs.astype(jnp.float32), axis=0)
    return num_experts * jnp.sum(jax.lax.stop_gradient(fraction) * mean_prob)


def router_z_loss(logits):
    """ST-MoE router z-loss `mean_t (logsumexp_e logits[t, e])^2` of router `logits [T, E]` (float32)."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_weights(key, d_model: int, expert_dim: int, num_experts: int):
    """Router `[d, E]` and expert weights, each N(0, 1 / fan_in) (one compiled function: eager initialisers compile
    one program per shape)."""
    keys = jax.random.split(key, 4)
    shapes = [(d_model, num_experts), (num_experts, d_model, expert_dim), (num_experts, d_model, expert_dim)]
    weights = [jax.random.normal(k, shape) / d_model**0.5 for k, shape in zip(keys, shapes, strict=False)]
    return (*weights, jax.random.normal(keys[3], (num_experts, expert_dim, d_model)) / expert_dim**0.5)


DISPATCH = {"ragged": moe_ragged, "one_hot": moe_one_hot}


class MoE(nnx.Module):
    """`moe(x [..., d]) -> (y [..., d], stats)`: the routed SwiGLU experts (+ the gated shared expert when
    `shared_dim > 0`). `stats`: `load_balancing_loss` and `router_z_loss` (float32 scalars), `tokens_per_expert`
    (`[E]` float32, assignments per expert, summing to T * k) and `dropped_fraction` (0: dispatch is dropless).

    Parameters are float32 (cast to `dtype` for compute); the router runs in float32. Logical axes: router
    `[d, E]` ("embed", "router"), expert projections `[E, d, f]` ("expert", "embed", "mlp") and `[E, f, d]`
    ("expert", "mlp", "embed"), the shared expert as `GLUMLP`, its gate `[d, 1]` ("embed", "gate")."""

    def __init__(
        self,
        d_model: int,
        expert_dim: int,
        num_experts: int,
        top_k: int,
        *,
        norm_topk_prob: bool = True,
        shared_dim: int = 0,
        dispatch: str = "ragged",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if dispatch not in DISPATCH:
            raise ValueError(f"dispatch must be one of {sorted(DISPATCH)}, got {dispatch!r}")
        self.num_experts, self.top_k, self.norm_topk_prob = num_experts, top_k, norm_topk_prob
        self.dispatch, self.dtype = dispatch, dtype
        router, w_gate, w_up, w_down = _init_weights(rngs.params(), d_model, expert_dim, num_experts)
        self.router = param(router, ("embed", "router"))
        self.w_gate = param(w_gate, ("expert", "embed", "mlp"))
        self.w_up = param(w_up, ("expert", "embed", "mlp"))
        self.w_down = param(w_down, ("expert", "mlp", "embed"))
        if shared_dim:
            self.shared_expert = GLUMLP(d_model, shared_dim, "silu", dtype=dtype, rngs=rngs)
            self.shared_gate = dense(d_model, 1, ("embed", "gate"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x) -> tuple[Any, dict[str, Any]]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = tokens.astype(jnp.float32) @ self.router[...]
        weights, experts = route(logits, self.top_k, self.norm_topk_prob)
        dtype = self.dtype or x.dtype
        w_gate, w_up, w_down = (w[...].astype(dtype) for w in (self.w_gate, self.w_up, self.w_down))
        y = DISPATCH[self.dispatch](tokens.astype(dtype), weights, experts, w_gate, w_up, w_down)
        if hasattr(self, "shared_expert"):
            y = y + jax.nn.sigmoid(self.shared_gate(tokens)) * self.shared_expert(tokens)
        stats = {
            "load_balancing_loss": load_balancing_loss(jax.nn.softmax(logits, axis=-1), experts, self.num_experts),
            "router_z_loss": router_z_loss(logits),
            "tokens_per_expert": jnp.zeros((self.num_experts,), jnp.float32).at[experts.reshape(-1)].add(1.0),
            "dropped_fraction": jnp.zeros((), jnp.float32),
        }
        return y.reshape(shape[:-1] + y.shape[-1:]), stats

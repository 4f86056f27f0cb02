"""Adaptive Computation Modules (after Wójcik et al. 2024, "Adaptive Computation Modules: Granular Conditional
Computation for Efficient Inference"; docs/early_exit.md#adaptive-computation-modules).

Each block's dense GLU MLP `f(x) = down(glu(x W_g, x W_u))` (hidden width H) becomes a sequence of N small
learners f_1 .. f_N of width H / N, and a token uses the first n of them, n = 0 .. N chosen per token and block by
a gate:

    y_n(x) = sum_{i <= n} f_i(x)

1. **Initialisation** (`init_learners`): the dense layer's hidden units, sorted by importance
   E_x|glu(x)_j| ||W_down[j]|| (most important first), are dealt into the N learners, so y_N is exactly f.
2. **Module-wise distillation** (`distill_loss`): every learner prefix is fitted to the dense layer it replaces,
   on the dense model's own inputs to that layer (layer by layer, the backbone frozen):

       L_distill = mean_x sum_{n=1}^{N} w_n ||y_n(x) - f(x)||^2 / mean_x ||f(x)||^2,   w_n = 1 (n < N), w_N = N

   (the full prefix weighs N: it starts exact and must stay close to f, or no gate choice reaches the dense
   model's quality).

3. **Gate** (`gate_loss`): `pi = softmax(W x + b)` over n = 0 .. N, trained with the learners held by the
   cost-aware routing objective on the layer's relative error e_n(x) = ||y_n(x) - f(x)||^2 / mean ||f||^2:
   mean_x sum_n pi_n (e_n + lam n / N) (`jei_dnn.expected_loss_and_cost`).

Inference: n = the largest n with P(choice >= n) >= tau (`middle_skip.choose`); while decoding, a loop runs
exactly n learners for the token. Not done here: the paper's last, end-to-end fine-tuning stage.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.models.dynamic_blocks import (
    DynamicModelError,
    check_model,
    hidden_and_mlp_inputs,
    run_block,
    sequence_cache,
)
from jdistill.models.generate import _argmax
from jdistill.models.jei_dnn import expected_loss_and_cost
from jdistill.models.middle_skip import choose
from jdistill.nn.activations import GATES, glu


def _gate_fn(mlp):
    return mlp.gating.gate if mlp.gating is not None else GATES[mlp.activation]


def init_learners(model, mlp_inputs, num_learners: int) -> dict:
    """ACM parameters for every block from the dense MLPs: learners `gate, up [L, N, d, H/N]`, `down [L, N, H/N,
    d]` (hidden units by importance on `mlp_inputs [L, tokens, d]`), gates `router_w [L, d, N + 1]`,
    `router_b [L, N + 1]` (zero weights, all learners preferred)."""
    check_model(model, "ACM", glu_mlp=True)
    gates, ups, downs = [], [], []
    for block, x in zip(model.blocks, mlp_inputs, strict=True):
        mlp = block.mlp
        if mlp.gate.bias is not None:
            raise DynamicModelError("ACM: MLPs with biases are not supported (model.mlp_bias must be false)")
        w_gate, w_up, w_down = (np.asarray(layer.kernel[...], np.float32) for layer in (mlp.gate, mlp.up, mlp.down))
        hidden_size = w_gate.shape[1]
        if hidden_size % num_learners:
            raise DynamicModelError(f"ACM: num_learners={num_learners} does not divide the MLP width {hidden_size}")
        hidden = np.asarray(glu(jnp.asarray(x) @ w_gate, jnp.asarray(x) @ w_up, _gate_fn(mlp), mlp.order))
        importance = np.abs(hidden.reshape(-1, hidden_size)).mean(0) * np.linalg.norm(w_down, axis=1)
        order = np.argsort(-importance).reshape(num_learners, -1)
        gates.append(w_gate[:, order].transpose(1, 0, 2))
        ups.append(w_up[:, order].transpose(1, 0, 2))
        downs.append(w_down[order])
    layers, d = len(gates), model.config.d_model
    router_b = np.zeros((layers, num_learners + 1), np.float32)
    router_b[:, -1] = 3.0
    return {
        "gate": jnp.asarray(np.stack(gates)),
        "up": jnp.asarray(np.stack(ups)),
        "down": jnp.asarray(np.stack(downs)),
        "router_w": jnp.zeros((layers, d, num_learners + 1), jnp.float32),
        "router_b": jnp.asarray(router_b),
    }


def learner_outputs(acm: dict, layer: int, x, gate_fn, order: int):
    """f_i(x) of every learner of block `layer`: `x [..., d]` -> `[N, ..., d]`."""
    hidden = glu(
        jnp.einsum("...d,ndh->n...h", x, acm["gate"][layer]),
        jnp.einsum("...d,ndh->n...h", x, acm["up"][layer]),
        gate_fn,
        order,
    )
    return jnp.einsum("n...h,nhd->n...d", hidden, acm["down"][layer])


def prefix_outputs(acm: dict, layer: int, x, gate_fn, order: int):
    """y_0 .. y_N `[N + 1, ..., d]` (y_0 = 0)."""
    outs = jnp.cumsum(learner_outputs(acm, layer, x, gate_fn, order), axis=0)
    return jnp.concatenate([jnp.zeros_like(outs[:1]), outs], axis=0)


def relative_errors(prefixes, dense):
    """e_n `[N + 1, ...]`: ||y_n - f||^2 / mean ||f||^2 (the mean over every token given)."""
    scale = jnp.maximum(jnp.mean(jnp.sum(dense * dense, axis=-1)), 1e-12)
    return jnp.sum((prefixes - dense[None]) ** 2, axis=-1) / scale


def distill_loss(acm: dict, layer: int, x, dense, gate_fn, order: int):
    """L_distill of block `layer` on its MLP inputs `x [..., d]` and the dense outputs `dense [..., d]`."""
    errors = relative_errors(prefix_outputs(acm, layer, x, gate_fn, order), dense)[1:]
    num = errors.shape[0]
    weights = jnp.ones((num,)).at[-1].set(num).reshape((num,) + (1,) * (errors.ndim - 1))
    return jnp.mean(jnp.sum(weights * errors, axis=0))


def router_logits(acm: dict, layer: int, x):
    """Gate logits `[..., N + 1]` over the number of learners."""
    return x.astype(jnp.float32) @ acm["router_w"][layer] + acm["router_b"][layer]


def gate_loss(acm: dict, layer: int, x, dense, gate_fn, order: int, *, lam: float):
    """The gate objective of block `layer` with the learners held (stop-gradient); returns (loss, metrics)."""
    errors = jax.lax.stop_gradient(relative_errors(prefix_outputs(acm, layer, x, gate_fn, order), dense))
    num = errors.shape[0] - 1
    pi = jnp.moveaxis(jax.nn.softmax(router_logits(acm, layer, x), axis=-1), -1, 0)
    return expected_loss_and_cost(pi, errors, np.arange(num + 1) / num, lam=lam)


def acm_mlp(acm: dict, layer: int, x, counts, gate_fn, order: int):
    """y_{n(t)}(x_t) with per-token learner counts `counts [...]` (all learners computed, then masked: for
    teacher-forced evaluation)."""
    prefixes = prefix_outputs(acm, layer, x, gate_fn, order)
    return jnp.take_along_axis(prefixes, counts[None, ..., None], axis=0)[0]


def forward(model, acm: dict, inputs, threshold: float):
    """Teacher-forced pass with every MLP an ACM whose gate picks each token's learners: (logits, learner counts
    `[L, batch, seq]`)."""
    batch, seq = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    h = model.embed(inputs)
    counts = []
    for layer, (block, cache) in enumerate(zip(model.blocks, sequence_cache(model, batch, seq), strict=True)):
        gate_fn, order = _gate_fn(block.mlp), block.mlp.order

        def mlp(x, layer=layer, gate_fn=gate_fn, order=order):
            n = choose(router_logits(acm, layer, x), threshold)
            counts.append(n)
            return acm_mlp(acm, layer, x, n, gate_fn, order)

        h, _ = run_block(block, h, positions, cache, mlp_fn=mlp)
    return model._logits(model.final_norm(h)), jnp.stack(counts)


def dense_targets(model, inputs):
    """(MLP inputs `[L, batch, seq, d]`, dense MLP outputs `[L, batch, seq, d]`) of the frozen model."""
    _, mlp_inputs = hidden_and_mlp_inputs(model, inputs)
    return mlp_inputs, jnp.stack([block.mlp(x) for block, x in zip(model.blocks, mlp_inputs, strict=True)])


def _run_learners(acm: dict, layer: int, x, count, gate_fn, order: int):
    """y_count(x) computing only `count` learners (a loop with a traced trip count: the decoding path)."""

    def body(i, y):
        w_gate = jax.lax.dynamic_index_in_dim(acm["gate"][layer], i, keepdims=False)
        w_up = jax.lax.dynamic_index_in_dim(acm["up"][layer], i, keepdims=False)
        w_down = jax.lax.dynamic_index_in_dim(acm["down"][layer], i, keepdims=False)
        return y + glu(x @ w_gate, x @ w_up, gate_fn, order) @ w_down

    return jax.lax.fori_loop(0, count, body, jnp.zeros_like(x))


def _generate(model, acm, prompt, *, max_new_tokens: int, threshold: float):
    batch, width = prompt.shape
    caches = model.init_cache(batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(width), (batch, width))
    logits, caches = model.decode(prompt, positions=positions, caches=caches, last_only=True)  # dense prefill
    first = _argmax(logits[:, 0]).astype(jnp.int32)
    blocks = list(model.blocks)

    def step(carry, index):
        token, caches = carry
        position = jnp.full((batch, 1), width + index)
        h = model.embed(token[:, None])
        caches, used = list(caches), []
        for layer, block in enumerate(blocks):
            gate_fn, order = _gate_fn(block.mlp), block.mlp.order

            def mlp(x, layer=layer, gate_fn=gate_fn, order=order):
                count = jnp.max(choose(router_logits(acm, layer, x), threshold))  # the batch runs its maximum
                used.append(count)
                return _run_learners(acm, layer, x, count, gate_fn, order)

            h, caches[layer] = run_block(block, h, position, caches[layer], mlp_fn=mlp)
        nxt = _argmax(model._logits(model.final_norm(h[:, 0]))).astype(jnp.int32)
        return (nxt, tuple(caches)), (nxt, jnp.stack(used))

    (_, _), (tokens, used) = jax.lax.scan(step, (first, caches), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], tokens.T], axis=1), used


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "threshold"))
def _generate_jit(graphdef, params, acm, prompt, **options):
    return _generate(nnx.merge(graphdef, params), acm, prompt, **options)


def generate_with_acm(model, acm: dict, prompt_ids, *, max_new_tokens: int, threshold: float = 0.5):
    """Greedy continuation of full-length prompts `[batch, P]` (prefilled with the dense MLPs) where each new
    token runs, in every block, the number of learners its gate picks (the batch runs the largest of its rows').
    Returns (tokens `[batch, max_new_tokens]`, learners used `[max_new_tokens - 1, L]`)."""
    check_model(model, "ACM", glu_mlp=True)
    graphdef, params = nnx.split(model)
    return _generate_jit(
        graphdef,
        params,
        acm,
        jnp.asarray(prompt_ids, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        threshold=float(threshold),
    )

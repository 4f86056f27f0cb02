"""Self-ablating transformers (after Ferrao et al. 2025, "Self-Ablating Transformers: More Interpretability, Less
Sparsity"; docs/early_exit.md#self-ablating-transformers).

Every block gets ablation gates on its attention heads and its MLP neurons, computed per token from the block's
input: scores `s = W rms(h) + b` (one per head, one per hidden unit of the GLU), and a k-winner-takes-all mask
keeps the k highest-scoring units and ablates (zeroes) the rest:

    m_i = 1[s_i among the top k of s]                                   (forward)
    dm_i / ds_i = d/ds_i sigmoid((s_i - theta) / T),  theta = (s_(k) + s_(k+1)) / 2    (straight-through backward)

The head mask multiplies each head's output before the output projection; the neuron mask multiplies the GLU's
hidden units. The model and the gates are trained together on the ordinary next-token loss with the ablation on
(`forward`), so each token learns to work with k heads and k neurons per block. At inference the gates can stay
on: a token then needs only its k neurons' columns of the MLP weights (`generate_with_ablation` gathers them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.models.dynamic_blocks import check_model, glu_hidden, run_block, sequence_cache
from jdistill.models.generate import _argmax
from jdistill.nn.activations import GATES, glu


def init_gates(model, rng) -> dict:
    """Gate parameters `[L, d, heads]`, `[L, heads]`, `[L, d, hidden]`, `[L, hidden]` (N(0, 0.02^2) weights)."""
    check_model(model, "self-ablation", glu_mlp=True)
    cfg = model.config
    layers, d, heads, hidden = cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim
    head_key, neuron_key = jax.random.split(rng)
    return {
        "head_w": 0.02 * jax.random.normal(head_key, (layers, d, heads)),
        "head_b": jnp.zeros((layers, heads)),
        "neuron_w": 0.02 * jax.random.normal(neuron_key, (layers, d, hidden)),
        "neuron_b": jnp.zeros((layers, hidden)),
    }


def kwta(scores, k, temperature: float = 1.0):
    """k-winner-takes-all mask `[..., n]` of the module docstring (hard forward, sigmoid straight-through); `k`
    may be traced (one compiled program for every k)."""
    n = scores.shape[-1]
    ranked = jnp.sort(scores, axis=-1)[..., ::-1]  # descending
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, n)
    kth = jnp.take(ranked, k - 1, axis=-1)
    next_ = jnp.where(k < n, jnp.take(ranked, jnp.minimum(k, n - 1), axis=-1), kth - 1.0)
    theta = jax.lax.stop_gradient(0.5 * (kth + next_))[..., None]
    hard = (scores > theta).astype(scores.dtype)
    soft = jax.nn.sigmoid((scores - theta) / temperature)
    return hard + soft - jax.lax.stop_gradient(soft)


def _scores(h, weight, bias):
    h = h.astype(jnp.float32)
    return (h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)) @ weight + bias


def forward(model, gates: dict, inputs, *, k_heads: int, k_neurons: int, temperature: float = 1.0):
    """Teacher-forced pass with the ablation on: logits `[batch, seq, vocab]`."""
    batch, seq = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    h = model.embed(inputs)
    for layer, (block, cache) in enumerate(zip(model.blocks, sequence_cache(model, batch, seq), strict=True)):
        head_mask = kwta(_scores(h, gates["head_w"][layer], gates["head_b"][layer]), k_heads, temperature)

        def mlp(x, layer=layer, block=block):
            mask = kwta(_scores(x, gates["neuron_w"][layer], gates["neuron_b"][layer]), k_neurons, temperature)
            return block.mlp.down(glu_hidden(block.mlp, x) * mask.astype(x.dtype))

        h, _ = run_block(block, h, positions, cache, head_mask=head_mask, mlp_fn=mlp)
    return model._logits(model.final_norm(h))


def _gathered_mlp(block, x, index):
    """The GLU MLP on `x [batch, 1, d]` through the hidden units `index [batch, k]` only (weights gathered)."""
    mlp = block.mlp
    gate_fn = mlp.gating.gate if mlp.gating is not None else GATES[mlp.activation]
    w_gate = jnp.take(mlp.gate.kernel[...], index, axis=1)  # [d, batch, k]
    w_up = jnp.take(mlp.up.kernel[...], index, axis=1)
    w_down = jnp.take(mlp.down.kernel[...], index, axis=0)  # [batch, k, d]
    hidden = glu(jnp.einsum("bsd,dbk->bsk", x, w_gate), jnp.einsum("bsd,dbk->bsk", x, w_up), gate_fn, mlp.order)
    return jnp.einsum("bsk,bkd->bsd", hidden, w_down)


def _generate(model, gates, prompt, *, max_new_tokens: int, k_heads: int, k_neurons: int):
    batch, width = prompt.shape
    caches = model.init_cache(batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(width), (batch, width))
    h = model.embed(prompt)
    new = []
    for layer, (block, cache) in enumerate(zip(model.blocks, caches, strict=True)):  # prefill with the ablation
        head_mask = kwta(_scores(h, gates["head_w"][layer], gates["head_b"][layer]), k_heads)

        def mlp(x, layer=layer, block=block):
            mask = kwta(_scores(x, gates["neuron_w"][layer], gates["neuron_b"][layer]), k_neurons)
            return block.mlp.down(glu_hidden(block.mlp, x) * mask.astype(x.dtype))

        h, cache = run_block(block, h, positions, cache, head_mask=head_mask, mlp_fn=mlp)
        new.append(cache)
    first = _argmax(model._logits(model.final_norm(h[:, -1]))).astype(jnp.int32)

    def step(carry, index):
        token, caches = carry
        position = jnp.full((batch, 1), width + index)
        h = model.embed(token[:, None])
        caches = list(caches)
        for layer, block in enumerate(model.blocks):
            head_mask = kwta(_scores(h, gates["head_w"][layer], gates["head_b"][layer]), k_heads)

            def mlp(x, layer=layer, block=block):
                scores = _scores(x, gates["neuron_w"][layer], gates["neuron_b"][layer])[:, 0]
                return _gathered_mlp(block, x, jax.lax.top_k(scores, k_neurons)[1])

            h, caches[layer] = run_block(block, h, position, caches[layer], head_mask=head_mask, mlp_fn=mlp)
        nxt = _argmax(model._logits(model.final_norm(h[:, 0]))).astype(jnp.int32)
        return (nxt, tuple(caches)), nxt

    (_, _), tokens = jax.lax.scan(step, (first, tuple(new)), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], tokens.T], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "k_heads", "k_neurons"))
def _generate_jit(graphdef, params, gates, prompt, **options):
    return _generate(nnx.merge(graphdef, params), gates, prompt, **options)


def generate_with_ablation(model, gates: dict, prompt_ids, *, max_new_tokens: int, k_heads: int, k_neurons: int):
    """Greedy continuation of full-length prompts `[batch, P]` with the ablation on; each new token's MLPs read
    only the weight columns of its k winning neurons. Returns tokens `[batch, max_new_tokens]`."""
    check_model(model, "self-ablation", glu_mlp=True)
    graphdef, params = nnx.split(model)
    return _generate_jit(
        graphdef,
        params,
        gates,
        jnp.asarray(prompt_ids, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        k_heads=int(k_heads),
        k_neurons=int(k_neurons),
    )

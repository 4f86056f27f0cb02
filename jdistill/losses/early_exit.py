"""LayerSkip training objectives (Elhoushi et al. 2024, "LayerSkip: Enabling Early Exit Inference and
Self-Speculative Decoding"; docs/early_exit.md#layerskip-training): an early-exit loss on every layer through the
model's own (shared) final norm and output head, with a curriculum over layers, and layer dropout whose rate rises
with depth.

Layers are 0-based, l = 0 .. L-1 (l is block l's output). With `e_scale` the paper's scale and C(t, l) in {0, 1}
the curriculum at step t:

    e(l) = e_scale * sum_{i=0}^{l} i                         for l < L - 1
    e(L-1) = L - 1 + e_scale * sum_{i=0}^{L-2} i
    w(t, l) = C(t, l) e(l) / sum_i C(t, i) e(i)
    J(t) = sum_l w(t, l) CE(head(norm(h_l)), y)

Curricula: `none` (C = 1), `rotational` with period R (C(t, l) = 1 iff l mod R = t mod R, and always for the last
layer), `gradual` over T_C steps (C(t, l) = 1 iff l > ceil(L - 1 - (t / T_C) L): exits switch on from the last
layer down to the first). With e_scale = 0 only the last layer's CE remains: plain training.

Layer dropout rate of layer l at step t (per example: each row skips the block independently):

    p(l, t) = S(t) D(l) p_max,   D(l) = exp(l ln 2 / (L - 1)) - 1,   S(t) = exp(t ln 2 / (T - 1)) - 1 or 1

(D rises from 0 at the first layer to 1 at the last; `exponential` S rises from 0 to 1 over the T steps,
`constant` S = 1, the paper's choices for fine-tuning and pre-training).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CURRICULA = ("none", "rotational", "gradual")
DROPOUT_SCHEDULES = ("constant", "exponential")


def exit_scales(num_layers: int, e_scale: float) -> np.ndarray:
    """e(l) of the module docstring, `[num_layers]` (before the curriculum and normalisation)."""
    cumulative = np.cumsum(np.arange(num_layers, dtype=np.float64))  # sum_{i=0}^{l} i
    scales = e_scale * cumulative
    scales[-1] = num_layers - 1 + e_scale * (cumulative[-2] if num_layers > 1 else 0.0)
    if num_layers == 1:  # the formula gives 0; one layer is plain training
        scales[-1] = 1.0
    return scales


def curriculum_mask(num_layers: int, step, *, curriculum: str, rotation: int = 2, gradual_steps: int = 1):
    """C(t, l) `[num_layers]` (float 0/1) at step `step` (may be traced)."""
    layers = jnp.arange(num_layers)
    last = layers == num_layers - 1
    if curriculum == "none":
        return jnp.ones((num_layers,), jnp.float32)
    if curriculum == "rotational":
        return ((layers % rotation == step % rotation) | last).astype(jnp.float32)
    if curriculum == "gradual":
        threshold = jnp.ceil(num_layers - 1 - (step / max(gradual_steps, 1)) * num_layers)
        return ((layers > threshold) | last).astype(jnp.float32)
    raise ValueError(f"curriculum must be one of {CURRICULA}, got {curriculum!r}")


def exit_weights(num_layers: int, step, *, e_scale: float, curriculum: str, rotation: int = 2, gradual_steps: int = 1):
    """w(t, l) `[num_layers]`: the normalised early-exit loss weights of the module docstring (sum 1)."""
    scales = jnp.asarray(exit_scales(num_layers, e_scale), jnp.float32)
    on = curriculum_mask(num_layers, step, curriculum=curriculum, rotation=rotation, gradual_steps=gradual_steps)
    weighted = on * scales
    return weighted / jnp.sum(weighted)


def layer_dropout_rates(num_layers: int, step, total_steps: int, *, p_max: float, schedule: str = "constant"):
    """p(l, t) `[num_layers]` of the module docstring."""
    if schedule not in DROPOUT_SCHEDULES:
        raise ValueError(f"schedule must be one of {DROPOUT_SCHEDULES}, got {schedule!r}")
    layers = jnp.arange(num_layers, dtype=jnp.float32)
    depth = jnp.exp(layers * jnp.log(2.0) / max(num_layers - 1, 1)) - 1.0
    time = jnp.ones((), jnp.float32)
    if schedule == "exponential":
        time = jnp.exp(jnp.asarray(step, jnp.float32) * jnp.log(2.0) / max(total_steps - 1, 1)) - 1.0
    return jnp.clip(time * depth * p_max, 0.0, 1.0)


def layer_keep_mask(rng, batch: int, rates):
    """bool `[batch, num_layers]`: True where a row runs the block (drawn with probability 1 - rate)."""
    return jax.random.uniform(rng, (batch, rates.shape[0])) >= rates[None, :]


def max_active_exits(num_layers: int, *, e_scale: float, curriculum: str, rotation: int = 2) -> int:
    """The most layers with a nonzero weight w(t, l) at any step (static): the layers whose loss is computed.

    e(0) = 0 whenever e_scale is used, so block 0 never counts; `rotational` turns on about L / R layers per step
    (plus the last); `gradual` ends with every layer with e(l) > 0 on."""
    scales = exit_scales(num_layers, e_scale) > 0
    if curriculum == "rotational":
        layers = np.arange(num_layers)
        return max(
            int(np.sum(scales & ((layers % rotation == phase) | (layers == num_layers - 1))))
            for phase in range(rotation)
        )
    return int(np.sum(scales))


def active_exits(layer_weights, count: int):
    """Indices `[count]` of the layers whose loss is computed at this step (traced): the last layer first, then the
    other layers with w_l > 0 in order, padded with zero-weight layers when fewer than `count` are on."""
    num_layers = layer_weights.shape[0]
    layers = jnp.arange(num_layers)
    rank = jnp.where(layers == num_layers - 1, -1, (layer_weights <= 0).astype(jnp.int32))
    return jnp.argsort(rank, stable=True)[:count]


def _chunk_ce(head, bias, carry, chunk):
    hidden, labels, valid = chunk  # [L, B, P, D], [B, P], [B, P]
    logits = jnp.dot(hidden, head, preferred_element_type=jnp.float32) + bias
    targets = jnp.broadcast_to(labels[None], logits.shape[:-1])[..., None]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets, axis=-1)[..., 0]
    return carry + jnp.sum(jnp.where(valid > 0, ce, 0.0) * valid, axis=(1, 2)), None


def early_exit_loss(normed_hidden, head, labels, layer_weights, *, mask=None, bias=None, chunk_size: int = 1024):
    """LayerSkip's early-exit loss J = sum_l w_l CE(normed_hidden_l @ head + bias, y) as (sum, count).

    normed_hidden `[L, batch, seq, d]`: each layer's output through the model's final norm; head `[d, vocab]`;
    labels `[batch, seq]`; layer_weights `[L]` (`exit_weights`); mask `[batch, seq]` or None. sum = sum over valid
    tokens of sum_l w_l CE_l, count = the number of valid tokens. See `exit_cross_entropies`."""
    sums, count = exit_cross_entropies(normed_hidden, head, labels, mask=mask, bias=bias, chunk_size=chunk_size)
    return jnp.dot(layer_weights.astype(jnp.float32), sums), count


def exit_cross_entropies(normed_hidden, head, labels, *, mask=None, bias=None, chunk_size: int = 1024):
    """Per layer, the cross-entropy CE(normed_hidden_l @ head + bias, y) summed over valid tokens, `[L]`, and the
    number of valid tokens. The logits are formed `chunk_size // (L * batch)` positions at a time (rematerialised
    in the backward pass): no `[L, batch, seq, vocab]` array exists."""
    num_layers, batch, seq = normed_hidden.shape[:3]
    positions = min(seq, max(1, chunk_size // max(batch * num_layers, 1)))
    num_chunks = -(-seq // positions)
    pad = num_chunks * positions - seq
    valid = jnp.ones((batch, seq), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)

    def chunks(x, axis):  # split the seq axis `axis` into [num_chunks, ..., positions, ...]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = jnp.pad(x, widths)
        x = x.reshape(*x.shape[:axis], num_chunks, positions, *x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    xs = (chunks(normed_hidden, 2), chunks(labels.astype(jnp.int32), 1), chunks(valid, 1))
    bias = jnp.zeros(head.shape[-1:], jnp.float32) if bias is None else bias.astype(jnp.float32)
    body = jax.checkpoint(functools.partial(_chunk_ce, head.astype(normed_hidden.dtype), bias))
    sums, _ = jax.lax.scan(body, jnp.zeros((num_layers,), jnp.float32), xs)
    return sums, jnp.sum(valid)

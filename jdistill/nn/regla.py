"""ReGLA: refined gated linear attention (Lu et al. 2025, "ReGLA: Refining Gated Linear Attention", NAACL).

Per head, with a state S `[d_k, d_v]` and a per-key-channel decay g_t in (0, 1)^{d_k}:

    S_t = diag(g_t) S_{t-1} + phi(k_t)^T v_t,      o_t = rmsnorm(phi(q_t) S_t) * w,      y = W_o [o_t per head]

The paper's three ingredients, and the details this implementation had to choose (the exact formulas were not
available; see docs/methods.md#regla):
  - Bounded feature map ("safe exp", a normalised exponential with a variance-reducing scale):
    phi(x) = exp((x - max_j x_j) / sqrt(d_k)). Values lie in [0, 1], so the state grows at most linearly in t
    and no exponential overflows. Chosen: the 1/sqrt(d_k) scale inside the exponential, and the per-token max
    over the feature axis, differentiated like the rest (unlike softmax, phi is not shift-invariant on the
    key side, so a stop_gradient on the max would not give the gradient of the function computed).
  - Normalisation for stability: instead of the linear-attention denominator phi(q) sum_s phi(k_s), an RMSNorm
    over each head's output (shared weight over heads). It also cancels the per-token factor exp(-max q) of the
    query features. Chosen: RMSNorm (not LayerNorm / GroupNorm), eps 1e-6.
  - Refining gate against saturation (the refine gate of Gu et al. 2020, "Improving the Gating Mechanism of
    Recurrent Neural Networks"): with forget gate f = sigmoid(x W_f + b_f) and refining gate
    r = sigmoid(x W_r + b_r), g = r (1 - (1 - f)^2) + (1 - r) f^2 = f^2 + 2 r f (1 - f). g lies between f^2 and
    1 - (1 - f)^2, so near a saturated f the refining gate can still move g with a non-vanishing gradient.
    Chosen: full-rank gate projections, one gate per key channel (GLA-style), b_f initialised to 3
    (f ~ 0.95), b_r to 0 (so g = f at initialisation).

Two equal forms: `gla_recurrent` (a `lax.scan` over tokens) and `gla_chunked` (a scan over chunks of
`chunk_size`, the intra-chunk part as a masked decay-weighted attention). Every exponential in the chunked form
is of a non-positive number, so strong decays stay finite. Both are causal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.nn.norms import RMSNorm
from jdistill.nn.params import dense

FORGET_BIAS_INIT = 3.0


def safe_exp_features(x):
    """`exp((x - max_j x_j) / sqrt(d))` over the last axis (size d); values in [0, 1]."""
    shifted = x - jnp.max(x, axis=-1, keepdims=True)
    return jnp.exp(shifted / math.sqrt(x.shape[-1]))


def refined_log_decay(forget_logits, refine_logits):
    """`log g` for g = f^2 + 2 r f (1 - f), f = sigmoid(forget_logits), r = sigmoid(refine_logits)."""
    f = jax.nn.sigmoid(forget_logits)
    r = jax.nn.sigmoid(refine_logits)
    # g = f (f + 2 r (1 - f)); the second factor is >= f, kept away from 0 so log and its gradient stay finite
    return jax.nn.log_sigmoid(forget_logits) + jnp.log(jnp.maximum(f + 2 * r * (1 - f), 1e-30))


def _compute_dtype(x):
    """float32 at least (float64 stays float64, for gradient checks)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def gla_recurrent(q, k, v, log_decay, initial_state=None):
    """Gated linear attention, token by token.

    q, k, log_decay `[batch, seq, heads, d_k]` (features already mapped; log_decay <= 0), v `[batch, seq, heads,
    d_v]`; initial_state `[batch, heads, d_k, d_v]` (zeros if None). Returns (o `[batch, seq, heads, d_v]`,
    final state), in float32 (or float64 for float64 inputs). o_t = q_t S_t with S_t including token t.
    """
    batch, _, heads, key_dim = q.shape
    dtype = _compute_dtype(q)
    state = jnp.zeros((batch, heads, key_dim, v.shape[-1]), dtype) if initial_state is None else initial_state

    def step(state, inputs):
        q_t, k_t, v_t, decay_t = inputs
        state = jnp.exp(decay_t)[..., None] * state + k_t[..., :, None] * v_t[..., None, :]
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    sequence_first = [jnp.moveaxis(a.astype(dtype), 1, 0) for a in (q, k, v, log_decay)]
    state, out = jax.lax.scan(step, state.astype(dtype), sequence_first)
    return jnp.moveaxis(out, 0, 1), state


def _chunk_step(state, chunk):
    """One chunk: the carried state's contribution, the masked intra-chunk part, and the state update."""
    q, k, v, log_decay = chunk  # [batch, C, heads, d]
    cumulative = jnp.cumsum(log_decay, axis=1)  # non-increasing along the chunk
    inter = jnp.einsum("bthk,bhkv->bthv", q * jnp.exp(cumulative), state)
    size = q.shape[1]
    causal = jnp.tril(jnp.ones((size, size), bool))[None, :, :, None, None]
    pair_decay = cumulative[:, :, None] - cumulative[:, None, :]  # [batch, t, s, heads, d_k], <= 0 where s <= t
    weights = jnp.exp(jnp.where(causal, pair_decay, -jnp.inf))
    scores = jnp.einsum("bthk,bshk,btshk->btsh", q, k, weights)
    intra = jnp.einsum("btsh,bshv->bthv", scores, v)
    last = cumulative[:, -1]
    carried_keys = k * jnp.exp(last[:, None] - cumulative)
    state = jnp.exp(last)[..., None] * state + jnp.einsum("bshk,bshv->bhkv", carried_keys, v)
    return state, inter + intra


def gla_chunked(q, k, v, log_decay, initial_state=None, *, chunk_size: int = 64):
    """The chunked parallel form of `gla_recurrent` (same arguments and results); any sequence length."""
    batch, seq, heads, key_dim = q.shape
    dtype = _compute_dtype(q)
    state = jnp.zeros((batch, heads, key_dim, v.shape[-1]), dtype) if initial_state is None else initial_state
    num_chunks = -(-seq // chunk_size)
    pad = num_chunks * chunk_size - seq

    def to_chunks(a):
        # zero padding at the end: k = 0 adds nothing to the state and log_decay = 0 keeps it, so the final
        # state is exact; the padded outputs are dropped
        a = jnp.pad(a.astype(dtype), ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.moveaxis(a.reshape(batch, num_chunks, chunk_size, *a.shape[2:]), 1, 0)

    chunks = [to_chunks(a) for a in (q, k, v, log_decay)]
    state, out = jax.lax.scan(_chunk_step, state.astype(dtype), chunks)
    out = jnp.moveaxis(out, 0, 1).reshape(batch, num_chunks * chunk_size, heads, v.shape[-1])
    return out[:, :seq], state


class ReGLA(nnx.Module):
    """ReGLA token mixer: `x [batch, seq, d_model] -> [batch, seq, d_model]` (formulas in the module docstring).

    `mode="chunked"` (default) or `"recurrent"`; both give the same outputs and final state.
    """

    def __init__(self, d_model: int, num_heads: int, *, chunk_size: int = 64, dtype=None, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.chunk_size = chunk_size
        linear = dict(use_bias=False, dtype=dtype, rngs=rngs)
        into_heads = ("embed", "heads")
        self.query = dense(d_model, d_model, into_heads, **linear)
        self.key = dense(d_model, d_model, into_heads, **linear)
        self.value = dense(d_model, d_model, into_heads, **linear)
        self.forget_gate = dense(
            d_model, d_model, into_heads, dtype=dtype, rngs=rngs, bias_init=nnx.initializers.constant(FORGET_BIAS_INIT)
        )
        self.refine_gate = dense(d_model, d_model, into_heads, dtype=dtype, rngs=rngs)
        self.output_norm = RMSNorm(self.head_dim)
        self.output = dense(d_model, d_model, ("heads", "embed"), **linear)

    def __call__(self, x, *, mode: str = "chunked", initial_state=None, return_state: bool = False):
        """Returns y, or (y, final state `[batch, heads, head_dim, head_dim]`) with `return_state=True`."""
        if mode not in ("chunked", "recurrent"):
            raise ValueError(f"mode must be 'chunked' or 'recurrent', got {mode!r}")
        batch, seq, d_model = x.shape

        def heads(a):
            return a.reshape(batch, seq, self.num_heads, self.head_dim)

        q = safe_exp_features(heads(self.query(x)).astype(jnp.float32))
        k = safe_exp_features(heads(self.key(x)).astype(jnp.float32))
        v = heads(self.value(x))
        log_decay = refined_log_decay(
            heads(self.forget_gate(x)).astype(jnp.float32), heads(self.refine_gate(x)).astype(jnp.float32)
        )
        if mode == "chunked":
            out, state = gla_chunked(q, k, v, log_decay, initial_state, chunk_size=self.chunk_size)
        else:
            out, state = gla_recurrent(q, k, v, log_decay, initial_state)
        y = self.output(self.output_norm(out).astype(x.dtype).reshape(batch, seq, d_model))
        return (y, state) if return_state else y

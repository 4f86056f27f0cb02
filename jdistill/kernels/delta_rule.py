"""The gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
Rule"; the linear-attention layer of Qwen3-Next), as a recurrence and in chunked (WY) form.

Per batch element and head, with state `S` of shape `[Dk, Dv]` (S_0 = initial_state or 0):

    S <- exp(g_t) S                              (gated decay; g_t <= 0 is a log decay)
    delta_t = beta_t (v_t - S^T k_t)             (delta-rule correction with write strength beta_t)
    S <- S + k_t delta_t^T
    o_t = S^T q_t

Shapes: q, k `[batch, seq, heads, Dk]`, v `[batch, seq, heads, Dv]`, g and beta `[batch, seq, heads]`;
returns o `[batch, seq, heads, Dv]` (and the final state `[batch, heads, Dk, Dv]` when asked). No query scale
is applied and q/k are used as given: L2-normalising q and k (and any `Dk ** -0.5` on q) is the caller's job.
All state arithmetic is float32; o is returned in v's dtype.

Chunked form (chunk length C; within a chunk, gamma_r = sum_{s<=r} g_s and G_r = exp(gamma_r)): unrolling the
recurrence from the chunk's initial state S_0 gives the written vectors u_r = beta_r (v_r - G_r S_0^T k_r
- sum_{s<r} (G_r/G_s)(k_r.k_s) u_s), i.e. (I + A) U = beta*V - (beta*G*K) S_0 with A strictly lower
triangular, A_rs = beta_r (G_r/G_s) k_r.k_s. With T = (I + A)^-1 (the WY representation): U = T(beta*V)
- T(beta*G*K) S_0, then

    O = (G*Q) S_0 + (causal_incl(Q K^T) * G_r/G_s) U,      S_C = G_C S_0 + (K * G_C/G)^T U.

Everything except the S_0 terms is computed for all chunks at once; a scan over chunks carries S.
Gradients of both forms are JAX autodiff. The Pallas chunked forward kernels (GPU and TPU) are in
`delta_rule_pallas`; their backward pass is the XLA chunked form's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdistill.kernels import support

CHUNK = 64


def _check(q, k, v, g, beta, initial_state):
    batch, seq, heads, key_dim = q.shape
    if k.shape != q.shape or v.shape[:3] != (batch, seq, heads):
        raise ValueError(f"k must be q's shape {q.shape} and v [batch, seq, heads, Dv]; got {k.shape}, {v.shape}")
    if g.shape != (batch, seq, heads) or beta.shape != (batch, seq, heads):
        raise ValueError(f"g and beta must be [batch, seq, heads] = {(batch, seq, heads)}; got {g.shape}, {beta.shape}")
    want = (batch, heads, key_dim, v.shape[-1])
    if initial_state is not None and initial_state.shape != want:
        raise ValueError(f"initial_state must be [batch, heads, Dk, Dv] = {want}; got {initial_state.shape}")


def _initial(q, v, initial_state):
    batch, _, heads, key_dim = q.shape
    if initial_state is None:
        return jnp.zeros((batch, heads, key_dim, v.shape[-1]), jnp.float32)
    return initial_state.astype(jnp.float32)


def delta_rule_recurrent(q, k, v, g, beta, initial_state=None):
    """The recurrence, one step per position (`lax.scan`); returns `(o, final_state)`."""
    f32 = lambda x: jnp.moveaxis(x.astype(jnp.float32), 1, 0)  # time-major

    def step(state, inputs):
        q_t, k_t, v_t, g_t, beta_t = inputs  # [B, H, D...]
        state = state * jnp.exp(g_t)[..., None, None]
        delta = beta_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", state, k_t))
        state = state + k_t[..., :, None] * delta[..., None, :]
        return state, jnp.einsum("bhkv,bhk->bhv", state, q_t)

    final, out = jax.lax.scan(step, _initial(q, v, initial_state), tuple(map(f32, (q, k, v, g, beta))))
    return jnp.moveaxis(out, 0, 1).astype(v.dtype), final


def _solve_unit_lower(a, rhs):
    """x with (I + a) x = rhs for a strictly lower triangular `a [..., C, C]`, `rhs [..., C, D]`: forward
    substitution, one row per step, x_r = rhs_r - sum_{s<r} a_rs x_s (rows not yet solved are zero). Written out
    rather than `solve_triangular`: inside the chunked step's program XLA:CPU's batched triangular solve hung."""

    def row(r, x):
        return x.at[..., r, :].set(rhs[..., r, :] - jnp.einsum("...s,...sd->...d", a[..., r, :], x))

    return jax.lax.fori_loop(0, a.shape[-1], row, jnp.zeros_like(rhs))


def _chunk_terms(q, k, v, g, beta):
    """Per-chunk quantities independent of the carried state; inputs `[B, H, N, C, D]` (g, beta `[B,H,N,C]`)."""
    chunk = q.shape[-2]
    gamma = jnp.cumsum(g, axis=-1)
    lower_incl = jnp.tril(jnp.ones((chunk, chunk), bool))
    diff = gamma[..., :, None] - gamma[..., None, :]
    decay = jnp.where(lower_incl, jnp.exp(jnp.where(lower_incl, diff, 0.0)), 0.0)  # G_r / G_s, s <= r
    strict = decay * (1.0 - jnp.eye(chunk))
    a = beta[..., :, None] * strict * jnp.einsum("...rd,...sd->...rs", k, k)
    solve = lambda rhs: _solve_unit_lower(a, rhs)
    g_exp = jnp.exp(gamma)[..., None]
    u_tilde = solve(beta[..., None] * v)
    w = solve(beta[..., None] * g_exp * k)
    attn = decay * jnp.einsum("...rd,...sd->...rs", q, k)
    k_to_end = k * jnp.exp(gamma[..., -1:] - gamma)[..., None]
    return u_tilde, w, attn, g_exp * q, k_to_end, jnp.exp(gamma[..., -1])


def delta_rule_chunked(q, k, v, g, beta, initial_state=None, chunk=CHUNK):
    """The chunked WY form (module docstring), chunk length `chunk`; returns `(o, final_state)`."""
    batch, seq, heads, _key_dim = q.shape
    padded = -(-seq // chunk) * chunk
    num_chunks = padded // chunk

    def chunks(x):  # [B, T, H, ...] -> [B, H, N, C, ...], zero-padded (g = beta = 0 leaves S unchanged)
        x = jnp.pad(x.astype(jnp.float32), [(0, 0), (0, padded - seq)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(batch, num_chunks, chunk, heads, *x.shape[3:])
        return jnp.moveaxis(x, 3, 1)

    u_tilde, w, attn, q_decayed, k_to_end, chunk_decay = _chunk_terms(*map(chunks, (q, k, v, g, beta)))

    def step(state, xs):  # state [B, H, Dk, Dv]
        u_tilde, w, attn, q_decayed, k_to_end, chunk_decay = xs
        u = u_tilde - jnp.einsum("bhck,bhkv->bhcv", w, state)
        out = jnp.einsum("bhck,bhkv->bhcv", q_decayed, state) + jnp.einsum("bhcs,bhsv->bhcv", attn, u)
        state = chunk_decay[..., None, None] * state + jnp.einsum("bhck,bhcv->bhkv", k_to_end, u)
        return state, out

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (u_tilde, w, attn, q_decayed, k_to_end, chunk_decay))
    final, out = jax.lax.scan(step, _initial(q, v, initial_state), xs)
    out = jnp.moveaxis(out, 0, 2).reshape(batch, heads, padded, -1)[:, :, :seq]
    return jnp.moveaxis(out, 1, 2).astype(v.dtype), final


def _pallas(backend, interpret=False):
    def run(q, k, v, g, beta, initial_state):
        from jdistill.kernels.delta_rule_pallas import delta_rule_pallas

        return delta_rule_pallas(q, k, v, g, beta, initial_state, backend=backend, interpret=interpret)

    return run


_IMPLS = {
    "recurrent": delta_rule_recurrent,
    "chunked": delta_rule_chunked,
    "pallas_gpu": _pallas("gpu"),
    "pallas_tpu": _pallas("tpu"),
    "interpret": _pallas("gpu", interpret=True),
}


_WHAT = "delta_rule_impl"


def _auto_impl() -> str:
    """The platform's preferred implementation: pallas_tpu on TPU, pallas_gpu on GPU, chunked elsewhere."""
    return support.DELTA_AUTO.get(support.target_platform(), ("chunked",))[0]


def delta_rule_impl_problem(impl: str, *, key_dim: int, value_dim: int) -> str | None:
    """What a model config should use instead of `impl` (None when it can run on the platform it is for);
    checked when the config is loaded, before any compute."""
    if impl == "auto":
        return None
    if impl not in _IMPLS:
        return f"one of {sorted(_IMPLS) + ['auto']}"
    problem = support.delta_rule_problem(
        impl, key_dim=key_dim, value_dim=value_dim, platform=support.DELTA_PLATFORM.get(impl, "any")
    )
    return None if problem is None else f"'auto' or 'chunked' ({impl} cannot run: {problem})"


def gated_delta_rule(q, k, v, g, beta, *, initial_state=None, output_final_state=False, impl="auto"):
    """Gated DeltaNet's token mixer (module docstring for the formulas, shapes and the paper).

    `impl`: "recurrent" (a scan over positions), "chunked" (XLA, WY form, chunk 64), "pallas_gpu" /
    "pallas_tpu" (Pallas chunked forward, `delta_rule_pallas`; gradients through the XLA chunked form; the GPU
    kernel needs key and value head dims that are powers of two >= 16), "interpret" (the GPU kernel in interpret
    mode, for CPU tests) or "auto" (pallas_tpu on TPU, pallas_gpu on GPU when it can run the call, chunked
    otherwise; the choice is logged once, `jdistill.kernels.support`). An explicit implementation that cannot run
    raises `KernelUnsupportedError`. Returns `o`, or `(o, final_state)` when `output_final_state`.
    """
    _check(q, k, v, g, beta, initial_state)

    def problem(name, platform=None):
        return support.delta_rule_problem(name, key_dim=q.shape[-1], value_dim=v.shape[-1], platform=platform)

    if impl == "auto":
        impl = support.choose(_WHAT, support.DELTA_AUTO, "chunked", problem)
    if impl not in _IMPLS:
        raise support.KernelUnsupportedError(f"{_WHAT} must be one of {sorted(_IMPLS) + ['auto']}, got {impl!r}")
    if (reason := problem(impl)) is not None:
        support.raise_unsupported(_WHAT, impl, reason, "chunked")
    out, final = _IMPLS[impl](q, k, v, g, beta, initial_state)
    return (out, final) if output_final_state else out

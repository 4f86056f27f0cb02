"""Chunked gated delta rule forward as Pallas kernels (GPU/Triton layout and Mosaic TPU), one chunk at a time.

The math is `delta_rule`'s chunked WY form (Yang et al. 2024, Gated Delta Networks), per chunk of C = 64:
with G_r = exp(gamma_r) (gamma the within-chunk cumulative log decay, computed by the XLA wrapper),
A_rs = beta_r (G_r/G_s) k_r.k_s for s < r, T = (I + A)^-1 by forward substitution (row r of T is
e_r - A[r, :] T, so no triangular solve is needed inside the kernel), U = T(beta V) - T(beta G K) S,
O = (G Q) S + (causal_incl(Q K^T) * G_r/G_s) U and S <- G_C S + (K * G_C/G)^T U.

The GPU kernel owns one (batch, head) and loops over chunks; the TPU kernel walks chunks on an "arbitrary"
grid axis with the state in VMEM scratch. The backward pass differentiates the XLA chunked form
(`delta_rule.delta_rule_chunked`), recomputing from the inputs: these kernels are forward-only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from jdistill.kernels import support
from jdistill.kernels.delta_rule import CHUNK, _initial, delta_rule_chunked

_TRANS_A = (((0,), (0,)), ((), ()))
_TRANS_B = (((1,), (1,)), ((), ()))
_PLAIN = (((1,), (0,)), ((), ()))


def _dot(a, b, dims=_PLAIN):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _unit_lower_inverse(a_t, chunk):
    """`(I + A)^-1` for strictly lower-triangular A, given A^T, by forward substitution over rows."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    unit_cols = jax.lax.broadcasted_iota(jnp.int32, (1, chunk), 1)

    def row(r, inverse):
        a_r = jnp.sum(jnp.where(cols == r, a_t, 0.0), axis=1, keepdims=True)  # A[r, :] as a column
        t_r = (unit_cols == r).astype(jnp.float32) - jnp.sum(a_r * inverse, axis=0, keepdims=True)
        return jnp.where(rows == r, t_r, inverse)

    return jax.lax.fori_loop(0, chunk, row, jnp.zeros((chunk, chunk), jnp.float32))


def _chunk(q, k, v, beta_col, gamma_col, gamma_row, state):
    """One chunk: inputs `[C, D]`, `[C, 1]` columns and a `[1, C]` row of gamma; returns `(out, new_state)`."""
    chunk = q.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    causal = rows >= cols
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, gamma_col - gamma_row, 0.0)), 0.0)  # G_r/G_s
    decay_t = jnp.where(rows <= cols, jnp.exp(jnp.where(rows <= cols, gamma_row - gamma_col, 0.0)), 0.0)
    kk = _dot(k, k, _TRANS_B)
    beta_row = jnp.sum(jnp.where(rows == cols, beta_col, 0.0), axis=0, keepdims=True)
    a_t = jnp.where(rows < cols, beta_row * decay_t * kk, 0.0)
    inverse = _unit_lower_inverse(a_t, chunk)
    g_exp = jnp.exp(gamma_col)
    u = _dot(inverse, beta_col * v) - _dot(_dot(inverse, beta_col * g_exp * k), state)
    out = _dot(g_exp * q, state) + _dot(decay * _dot(q, k, _TRANS_B), u)
    last = jax.lax.broadcasted_iota(jnp.int32, (1, chunk), 1) == chunk - 1
    gamma_last = jnp.sum(jnp.where(last, gamma_row, 0.0), axis=1, keepdims=True)  # [1, 1]
    k_to_end = k * jnp.exp(gamma_last - gamma_col)
    return out, jnp.exp(gamma_last) * state + _dot(k_to_end, u, _TRANS_A)


def _load_chunk(refs, start, chunk, n):
    q_ref, k_ref, v_ref, beta_ref, gamma_ref, gamma_row_ref = refs
    rows = pl.ds(start, chunk)
    f32 = lambda x: x.astype(jnp.float32)
    return (
        f32(q_ref[rows, :]),
        f32(k_ref[rows, :]),
        f32(v_ref[rows, :]),
        beta_ref[rows, :],
        gamma_ref[rows, :],
        gamma_row_ref[n],
    )


def _gpu_kernel(q_ref, k_ref, v_ref, beta_ref, gamma_ref, gamma_row_ref, s0_ref, o_ref, s_ref, *, chunk):
    refs = (q_ref, k_ref, v_ref, beta_ref, gamma_ref, gamma_row_ref)

    def body(n, state):
        q, k, v, beta, gamma, gamma_row = _load_chunk(refs, n * chunk, chunk, n)
        out, state = _chunk(q, k, v, beta, gamma, gamma_row, state)
        o_ref[pl.ds(n * chunk, chunk), :] = out.astype(o_ref.dtype)
        return state

    s_ref[...] = jax.lax.fori_loop(0, q_ref.shape[0] // chunk, body, s0_ref[...])


def _tpu_kernel(q_ref, k_ref, v_ref, beta_ref, gamma_ref, gamma_row_ref, s0_ref, o_ref, s_ref, state_scr, *, chunk):
    n = pl.program_id(2)

    @pl.when(n == 0)
    def _init():
        state_scr[...] = s0_ref[...]

    f32 = lambda x: x[...].astype(jnp.float32)
    out, state_scr[...] = _chunk(
        f32(q_ref), f32(k_ref), f32(v_ref), beta_ref[...], gamma_ref[...], gamma_row_ref[...], state_scr[...]
    )
    o_ref[...] = out.astype(o_ref.dtype)

    @pl.when(n == pl.num_programs(2) - 1)
    def _finish():
        s_ref[...] = state_scr[...]


def _prepare(q, k, v, g, beta, chunk):
    """Heads-first, zero-padded (identity steps) inputs plus gamma as columns `[B,H,T,1]` and rows
    `[B,H,N,1,C]`."""
    seq = q.shape[1]
    padded = -(-seq // chunk) * chunk
    heads_first = lambda x: jnp.moveaxis(jnp.pad(x, [(0, 0), (0, padded - seq)] + [(0, 0)] * (x.ndim - 2)), 2, 1)
    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    g, beta = heads_first(g.astype(jnp.float32)), heads_first(beta.astype(jnp.float32))  # [B, H, T]
    batch, heads = g.shape[:2]
    gamma = jnp.cumsum(g.reshape(batch, heads, padded // chunk, chunk), axis=-1)
    return q, k, v, beta[..., None], gamma.reshape(batch, heads, padded, 1), gamma[..., None, :]


def _forward(q, k, v, g, beta, initial_state, *, backend, interpret, chunk):
    seq = q.shape[1]
    q, k, v, beta, gamma, gamma_row = _prepare(q, k, v, g, beta, chunk)
    state = _initial(q.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), initial_state)
    batch, heads, padded, key_dim = q.shape
    value_dim, num_chunks = v.shape[-1], padded // chunk
    out_shape = [jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct(state.shape, jnp.float32)]
    if backend == "gpu":
        whole = lambda width: pl.BlockSpec((None, None, padded, width), lambda b, h: (b, h, 0, 0))
        state_spec = pl.BlockSpec((None, None, key_dim, value_dim), lambda b, h: (b, h, 0, 0))
        rows_spec = pl.BlockSpec((None, None, num_chunks, 1, chunk), lambda b, h: (b, h, 0, 0, 0))
        call = pl.pallas_call(
            functools.partial(_gpu_kernel, chunk=chunk),
            grid=(batch, heads),
            out_shape=out_shape,
            in_specs=[whole(key_dim), whole(key_dim), whole(value_dim), whole(1), whole(1), rows_spec, state_spec],
            out_specs=[whole(value_dim), state_spec],
            interpret=interpret,
            name="gated_delta_rule_fwd_gpu",
            compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
        )
    else:
        block = lambda width: pl.BlockSpec((None, None, chunk, width), lambda b, h, n: (b, h, n, 0))
        state_spec = pl.BlockSpec((None, None, key_dim, value_dim), lambda b, h, n: (b, h, 0, 0))
        rows_spec = pl.BlockSpec((None, None, None, 1, chunk), lambda b, h, n: (b, h, n, 0, 0))
        call = pl.pallas_call(
            functools.partial(_tpu_kernel, chunk=chunk),
            grid=(batch, heads, num_chunks),
            out_shape=out_shape,
            in_specs=[block(key_dim), block(key_dim), block(value_dim), block(1), block(1), rows_spec, state_spec],
            out_specs=[block(value_dim), state_spec],
            scratch_shapes=[pltpu.VMEM((key_dim, value_dim), jnp.float32)],
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
            interpret=interpret,
            name="gated_delta_rule_fwd_tpu",
        )
    out, final = call(q, k, v, beta, gamma, gamma_row, state)
    return jnp.moveaxis(out, 1, 2)[:, :seq], final


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _delta_rule(q, k, v, g, beta, initial_state, backend, interpret, chunk):
    return _forward(q, k, v, g, beta, initial_state, backend=backend, interpret=interpret, chunk=chunk)


def _delta_rule_fwd(q, k, v, g, beta, initial_state, backend, interpret, chunk):
    out = _forward(q, k, v, g, beta, initial_state, backend=backend, interpret=interpret, chunk=chunk)
    return out, (q, k, v, g, beta, initial_state)


def _delta_rule_bwd(backend, interpret, chunk, residuals, cotangents):
    q, k, v, g, beta, initial_state = residuals

    def chunked(q, k, v, g, beta, state):
        return delta_rule_chunked(q, k, v, g, beta, state, chunk=chunk)

    _, pullback = jax.vjp(chunked, q, k, v, g, beta, _initial(q, v, initial_state))
    grads = pullback(cotangents)
    return (*grads[:5], None if initial_state is None else grads[5].astype(initial_state.dtype))


_delta_rule.defvjp(_delta_rule_fwd, _delta_rule_bwd)


def delta_rule_pallas(q, k, v, g, beta, initial_state=None, *, backend="gpu", interpret=False, chunk=CHUNK):
    """Chunked gated delta rule with a Pallas forward (`backend` "gpu" or "tpu"); returns `(o, final_state)`.

    Gradients come from the XLA chunked form (module docstring). A backend or head dims the kernel does not
    take raise `KernelUnsupportedError` (interpret mode takes any head dims).
    """
    if backend not in ("gpu", "tpu"):
        raise support.KernelUnsupportedError(f"delta_rule_pallas backend must be 'gpu' or 'tpu', got {backend!r}")
    if backend == "gpu" and not interpret:
        problem = support.delta_rule_problem("pallas_gpu", key_dim=q.shape[-1], value_dim=v.shape[-1], platform="gpu")
        if problem is not None:
            raise support.KernelUnsupportedError(f"pallas_gpu delta rule cannot run: {problem}")
    return _delta_rule(q, k, v, g, beta, initial_state, backend, interpret, chunk)

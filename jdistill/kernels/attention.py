"""The attention core: `softmax(q k^T * scale + mask) v`, optionally times a sigmoid output gate.

`gated_attention` is the one entry point the layers call. This module holds the XLA reference path and the
dispatch by `impl` to the fused Pallas kernels (`pallas_gpu.py`, `pallas_tpu.py`), which keep the same signature.

Shapes (documented once, here):
    q        [batch, q_len, heads, head_dim]
    k, v     [batch, kv_len, kv_heads, head_dim]     heads % kv_heads == 0 (grouped-query attention)
    gate     pre-sigmoid logits, [batch, q_len, heads] (headwise) or [batch, q_len, heads, head_dim]
             (elementwise), or None (no gate)
    segment_ids  [batch, q_len] int (packed sequences; requires q_len == kv_len), or None
    returns  [batch, q_len, heads, head_dim]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jdistill.kernels import support
from jdistill.partitioning import current_rules, spec_for

_NEG_INF = -1e30


def attention_mask(q_len: int, kv_len: int, *, causal: bool, segment_ids=None, window: int | None = None):
    """Boolean mask `[batch or 1, 1, q_len, kv_len]`, True where a query may attend to a key.

    Causal masking aligns the last query with the last key (so decoding with a cache of length kv_len > q_len
    sees every earlier key). A sliding `window` keeps the `window` nearest keys: k in (q - window, q] when causal,
    |q - k| < window otherwise.
    """
    mask = jnp.ones((1, 1, q_len, kv_len), dtype=bool)
    q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    k_pos = jnp.arange(kv_len)[None, :]
    if causal:
        mask = mask & (k_pos <= q_pos)[None, None]
    if window is not None:
        mask = mask & (jnp.abs(q_pos - k_pos) < window)[None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask & same[:, None]
    return mask


def gated_attention_reference(q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, window=None):
    """XLA reference: `sigmoid(gate) * softmax(q k^T * scale + mask) v`, softmax in float32.

    A query row whose keys are all masked returns zeros (not NaN). The core runs head-major
    (`[batch, kv_heads, groups * q_len, head_dim]`, the query heads that share a key/value head stacked along
    the query axis) with a hand-written backward (`_attention_core`); without segment ids the mask is a
    trace-time constant.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    scale = head_dim**-0.5 if scale is None else scale
    groups = heads // kv_heads
    q_major = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    q_major = q_major.reshape(batch, kv_heads, groups * q_len, head_dim)
    k_major, v_major = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    mask: np.ndarray | jax.Array
    if segment_ids is None:
        mask = _static_mask(q_len, kv_len, causal, window)
    else:
        mask = attention_mask(q_len, kv_len, causal=causal, segment_ids=segment_ids, window=window)
    mask = jnp.tile(mask, (1, 1, groups, 1)) if groups > 1 else mask  # rows g * q_len + i
    empty_rows = segment_ids is not None or kv_len < q_len  # otherwise every query sees at least one key
    out = _attention_core(q_major, k_major, v_major, mask, float(scale), empty_rows)
    out = out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
    out = out.reshape(batch, q_len, heads, head_dim)
    if gate is not None:
        if gate.ndim == 3:
            gate = gate[..., None]
        out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
    return out


def _static_mask(q_len: int, kv_len: int, causal: bool, window: int | None) -> np.ndarray:
    """`attention_mask` without segment ids, as a numpy constant `[1, 1, q_len, kv_len]`."""
    q_pos = np.arange(q_len)[:, None] + (kv_len - q_len)
    k_pos = np.arange(kv_len)[None, :]
    mask = np.ones((q_len, kv_len), bool)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= np.abs(q_pos - k_pos) < window
    return mask[None, None]


def _softmax_weights(q, k, mask, scale: float, may_have_empty_rows: bool):
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    weights = jax.nn.softmax(jnp.where(mask, scores, _NEG_INF), axis=-1)
    if may_have_empty_rows:
        weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)
    return weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention_core(q, k, v, mask, scale: float, may_have_empty_rows: bool):
    """`softmax(q k^T * scale, masked) v` for head-major `q [b, h, m, d]`, `k, v [b, h, n, d]`, mask
    `[b or 1, 1, m, n]`.

    The backward is the usual one of FlashAttention (Dao et al. 2022) without tiling: with P the saved
    weights and O the output, dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)) * scale,
    dQ = dS K, dK = dS^T Q.
    """
    weights = _softmax_weights(q, k, mask, scale, may_have_empty_rows)
    return jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)


def _attention_core_fwd(q, k, v, mask, scale, may_have_empty_rows):
    weights = _softmax_weights(q, k, mask, scale, may_have_empty_rows)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
    return out, (q, k, v, weights, out)


def _attention_core_bwd(scale, may_have_empty_rows, residuals, d_out):
    del may_have_empty_rows  # empty rows have zero weights, so their dS is 0 already
    q, k, v, weights, out = residuals
    f32 = jnp.float32
    d_v = jnp.einsum("bhqk,bhqd->bhkd", weights.astype(v.dtype), d_out.astype(v.dtype))
    d_weights = jnp.einsum("bhqd,bhkd->bhqk", d_out, v, preferred_element_type=f32)
    row = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    d_scores = weights * (d_weights - row) * scale
    d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores.astype(k.dtype), k)
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_scores.astype(q.dtype), q)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def _pallas_gpu(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_gpu import gated_flash_attention

    return gated_flash_attention(q, k, v, gate, **kwargs)


def _interpret(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_gpu import gated_flash_attention

    return gated_flash_attention(q, k, v, gate, interpret=True, **kwargs)


def _pallas_tpu(q, k, v, gate, **kwargs):
    from jdistill.kernels.pallas_tpu import gated_flash_attention_tpu

    return gated_flash_attention_tpu(q, k, v, gate, **kwargs)


def _cudnn(q, k, v, gate, **kwargs):
    from jdistill.kernels.cudnn import gated_attention_cudnn

    return gated_attention_cudnn(q, k, v, gate, **kwargs)


_IMPLS: dict[str, Callable[..., jax.Array]] = {
    "xla": gated_attention_reference,
    "pallas_gpu": _pallas_gpu,
    "pallas_tpu": _pallas_tpu,
    "interpret": _interpret,
    "cudnn": _cudnn,
}
_WHAT = "attention_impl"


def _auto_impl() -> str:
    """The platform's first preferred implementation: pallas_tpu on TPU, cudnn on GPU, the XLA reference elsewhere
    (`support.choose` passes it over for calls it cannot run)."""
    return support.ATTENTION_AUTO.get(support.target_platform(), ("xla",))[0]


def attention_impl_problem(impl: str, *, head_dim: int, dtype, window: int | None = None) -> str | None:
    """What a model config should use instead of `impl` (None when `impl` can run its attention on the platform
    `impl` is for): checked when the config is loaded, before any compute. The platform itself is checked when
    the step is traced (an ahead-of-time compile targets another platform than the host's)."""
    if impl == "auto":
        return None
    if impl not in _IMPLS:
        return f"one of {sorted(_IMPLS) + ['auto']}"
    problem = support.attention_problem(
        impl, head_dim=head_dim, dtype=dtype, window=window, platform=support.ATTENTION_PLATFORM.get(impl, "any")
    )
    return None if problem is None else f"'auto' or 'xla' ({impl} cannot run: {problem})"


def _problem(impl, q, k, causal, segment_ids, window, platform=None):
    explicit_mask = segment_ids is not None or (causal and q.shape[1] != k.shape[1])
    return support.attention_problem(
        impl,
        head_dim=q.shape[-1],
        dtype=q.dtype,
        window=window,
        platform=platform,
        q_len=q.shape[1],
        kv_len=k.shape[1],
        explicit_mask=explicit_mask,
    )


def gated_attention(q, k, v, gate=None, *, causal=False, segment_ids=None, scale=None, window=None, impl="auto"):
    """Gated scaled-dot-product attention (Qiu et al. 2025, "Gated Attention for LLMs", the G1 gate).

    `out = sigmoid(gate) * softmax(q k^T * scale + mask) v`; see the module docstring for shapes.
    `impl`:
      - "xla": the reference above (autodiff through XLA); runs every call.
      - "pallas_gpu": the fused Pallas flash kernel with the gate in its epilogue and a Pallas backward
        (`jdistill.kernels.pallas_gpu`); GPU, head dims 64/128/256.
      - "pallas_tpu": the same kernel in Pallas Mosaic TPU (`jdistill.kernels.pallas_tpu`); TPU, head dims
        64/128/256, float32 or bfloat16.
      - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` and a separate gate; GPU, bf16/fp16.
      - "interpret": the Pallas GPU kernel in interpret mode (any head dim; for CPU tests).
      - "auto": pallas_tpu on TPU; on GPU cudnn, else pallas_gpu where cuDNN cannot run the call (float32, odd
        masked lengths; cuDNN measured 2-3.7x faster than the Pallas kernel on an H200); xla on CPU and wherever
        no kernel can run the call; the choice and its reason are logged once (`jdistill.kernels.support`).
    An explicit implementation that cannot run the call (wrong platform, head dim, dtype, or a sliding `window`,
    which only "xla" implements) raises `KernelUnsupportedError` naming it and the reason; nothing falls back.
    """
    if impl == "auto":
        impl = support.choose(
            _WHAT,
            support.ATTENTION_AUTO,
            "xla",
            lambda name, platform: _problem(name, q, k, causal, segment_ids, window, platform),
        )
    if impl not in _IMPLS:
        raise support.KernelUnsupportedError(f"{_WHAT} must be one of {sorted(_IMPLS) + ['auto']}, got {impl!r}")
    problem = _problem(impl, q, k, causal, segment_ids, window)
    if problem is not None:
        support.raise_unsupported(_WHAT, impl, problem, "xla")
    if window is not None:
        return gated_attention_reference(
            q, k, v, gate, causal=causal, segment_ids=segment_ids, scale=scale, window=window
        )
    if impl in _KERNEL_IMPLS:
        return _per_shard(_IMPLS[impl], q, k, v, gate, segment_ids, causal=causal, scale=scale)
    return _IMPLS[impl](q, k, v, gate, causal=causal, segment_ids=segment_ids, scale=scale)


_KERNEL_IMPLS = ("pallas_gpu", "pallas_tpu", "interpret")


def _per_shard(kernel, q, k, v, gate, segment_ids, **kwargs):
    """Run a Pallas kernel once per device under the current mesh (`jax.shard_map`): XLA cannot partition a
    Mosaic/Triton custom call itself. Batch rows split over the mesh axes of the logical `batch` axis and heads
    over those of `heads`, in the rules the step traces under (`jdistill.partitioning.axis_rules`: the same table
    as the activations' and the batch's shardings), when they divide; attention needs nothing from other shards,
    so there is no communication. Outside a mesh (or on one device) the kernel is called directly."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, gate, segment_ids=segment_ids, **kwargs)
    rules = current_rules()
    logical = ("batch", None, "heads", None)
    batch, _, heads, _ = spec_for(logical, q.shape, mesh, rules)
    if spec_for(logical, k.shape, mesh, rules)[2] != heads:  # grouped kv heads the head axes do not divide
        heads = None
    spec = P(batch, None, heads, None)
    args, specs = [q, k, v], [spec, spec, spec]
    if gate is not None:
        args.append(gate)
        specs.append(P(batch, None, heads, *([None] * (gate.ndim - 3))))
    if segment_ids is not None:
        args.append(segment_ids)
        specs.append(P(batch, None))

    def local(*local_args):
        q, k, v, *rest = local_args
        local_gate = rest.pop(0) if gate is not None else None
        local_segments = rest.pop(0) if segment_ids is not None else None
        return kernel(q, k, v, local_gate, segment_ids=local_segments, **kwargs)

    return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=spec, check_vma=False)(*args)

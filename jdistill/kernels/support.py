"""Which attention / delta-rule implementation can run a call, checked before anything is traced.

An explicitly requested implementation that cannot run (wrong platform, a head dim, dtype, block size or option
it does not implement) raises `KernelUnsupportedError`: one line naming the implementation and the reason, which
the CLI prints alone with exit code 2. Nothing falls back silently. `impl="auto"` picks the platform's fused
kernel when it can run and the XLA path otherwise, and says so once per distinct (choice, reason) on the
`jdistill.kernels` logger: INFO for the platform's usual choice, WARNING when the fused kernel had to be passed over.

The target platform is the one the program is traced for: the device platform of the mesh in context (so an
ahead-of-time TPU compile from a CPU host checks against TPU), else JAX's default backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jdistill.errors import UserError

LOG = logging.getLogger("jdistill.kernels")

# Head dims the fused flash kernels are built and tested for (tile shapes; Triton needs powers of two).
FLASH_HEAD_DIMS = (64, 128, 256)
FLASH_DTYPES = {"pallas_gpu": ("float32", "bfloat16", "float16"), "pallas_tpu": ("float32", "bfloat16")}
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 256  # 128 before Hopper; jax.nn checks the architecture itself
# The delta-rule GPU kernel's tiles are [chunk, key_dim] / [chunk, value_dim]: Triton dots need powers of two >= 16.
DELTA_GPU_MIN_DIM = 16

ATTENTION_PLATFORM = {"pallas_gpu": "gpu", "pallas_tpu": "tpu", "cudnn": "gpu"}
# `auto`'s preferences per platform, fastest first. GPU: cuDNN + separate gate before the fused Pallas kernel, as
# measured on an H200 (docs/benchmarks.md: cuDNN is 2-3.7x faster at 4k-16k tokens); the Pallas kernel runs what
# cuDNN cannot (float32, odd masked lengths).
ATTENTION_AUTO = {"gpu": ("cudnn", "pallas_gpu"), "tpu": ("pallas_tpu",)}
DELTA_PLATFORM = {"pallas_gpu": "gpu", "pallas_tpu": "tpu"}
DELTA_AUTO = {"gpu": ("pallas_gpu",), "tpu": ("pallas_tpu",)}


class KernelUnsupportedError(UserError, ValueError):
    """An explicitly requested kernel implementation that cannot run this call."""


def target_platform() -> str:
    """ "cpu", "gpu" or "tpu": the platform of the mesh in context, else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def flash_problem(impl: str, head_dim: int, dtype, interpret: bool = False) -> str | None:
    """Why the fused flash kernel `impl` ("pallas_gpu" / "pallas_tpu") cannot run this head dim and dtype."""
    if interpret:
        return None
    if head_dim not in FLASH_HEAD_DIMS:
        return f"head_dim {head_dim} is not one of {', '.join(map(str, FLASH_HEAD_DIMS))}"
    dtype_name = jnp.dtype(dtype).name
    if dtype_name not in FLASH_DTYPES[impl]:
        return f"dtype {dtype_name} is not one of {', '.join(FLASH_DTYPES[impl])}"
    return None


def block_problem(block_q: int, block_k: int, minimum: int, interpret: bool) -> str | None:
    """Why a flash kernel's query/key block sizes cannot be used (interpret mode takes any positive size)."""
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(block, int) or block < 1:
            return f"{name}={block!r} is not a positive integer"
        if not interpret and (not _is_power_of_two(block) or block < minimum):
            return f"{name}={block} is not a power of two >= {minimum}"
    return None


def attention_problem(
    impl: str,
    *,
    head_dim: int,
    dtype,
    window=None,
    platform: str | None = None,
    q_len: int | None = None,
    kv_len: int | None = None,
    explicit_mask: bool = False,
) -> str | None:
    """Why attention implementation `impl` cannot run a call (None when it can); `xla` runs everything.

    Only static facts are needed (head dim, dtype, window, lengths), so a config can be checked before any
    compute. `explicit_mask`: cuDNN gets a boolean mask (segment ids, or causal with q_len != kv_len).
    """
    if impl == "xla":
        return None
    needed = ATTENTION_PLATFORM.get(impl)
    platform = platform or target_platform()
    if needed is not None and platform != needed:
        return f"it needs a {needed.upper()} and this program is traced for {platform}"
    if window is not None:
        return "sliding-window attention is implemented only by the XLA reference ('xla')"
    if impl in FLASH_DTYPES:
        return flash_problem(impl, head_dim, dtype)
    if impl == "cudnn":
        dtype_name = jnp.dtype(dtype).name
        if dtype_name not in CUDNN_DTYPES:
            return f"dtype {dtype_name} is not one of {', '.join(CUDNN_DTYPES)}"
        if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
            return f"head_dim {head_dim} is not a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}"
        if explicit_mask and q_len is not None and kv_len is not None and (q_len % 2 or kv_len % 2):
            return (
                f"a masked call (segment ids, or causal with q_len != kv_len) needs even lengths, got q_len "
                f"{q_len} and kv_len {kv_len}"
            )
    return None


def delta_rule_problem(impl: str, *, key_dim: int, value_dim: int, platform: str | None = None) -> str | None:
    """Why delta-rule implementation `impl` cannot run (None when it can); "recurrent"/"chunked" run everything."""
    needed = DELTA_PLATFORM.get(impl)
    if needed is None:
        return None
    platform = platform or target_platform()
    if platform != needed:
        return f"it needs a {needed.upper()} and this program is traced for {platform}"
    if impl == "pallas_gpu":
        for name, dim in (("key head dim", key_dim), ("value head dim", value_dim)):
            if not _is_power_of_two(dim) or dim < DELTA_GPU_MIN_DIM:
                return f"{name} {dim} is not a power of two >= {DELTA_GPU_MIN_DIM}"
    return None


def raise_unsupported(what: str, impl: str, problem: str, fallback: str):
    raise KernelUnsupportedError(f"{what}={impl!r} cannot run: {problem} (use 'auto' or {fallback!r})")


_reported: set[tuple[str, str, str]] = set()


def report_auto_choice(what: str, choice: str, reason: str, passed_over: bool) -> None:
    """Log once per distinct (what, choice, reason) which implementation `auto` chose and why."""
    key = (what, choice, reason)
    if key in _reported:
        return
    _reported.add(key)
    LOG.log(logging.WARNING if passed_over else logging.INFO, "%s='auto' runs %r: %s", what, choice, reason)


def choose(what: str, auto_table: Mapping[str, tuple[str, ...]], fallback: str, problem_of) -> str:
    """`auto`: the platform's first preferred kernel for which `problem_of(impl, platform)` is None, else
    `fallback`; the choice and its reason are reported once."""
    platform = target_platform()
    preferred = auto_table.get(platform, ())
    if not preferred:
        report_auto_choice(what, fallback, f"no fused kernel for {platform}", passed_over=False)
        return fallback
    problems: list[str] = []
    for impl in preferred:
        problem = problem_of(impl, platform)
        if problem is None:
            reason = f"the {'first' if not problems else 'next'} choice for {platform}"
            report_auto_choice(what, impl, "; ".join([*problems, reason]), passed_over=False)
            return impl
        problems.append(f"{impl!r} cannot run: {problem}")
    report_auto_choice(what, fallback, "; ".join(problems), passed_over=True)
    return fallback

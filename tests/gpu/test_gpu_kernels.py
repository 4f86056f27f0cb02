"""GPU-only checks (skipped elsewhere): the compiled Pallas GPU kernel and the cuDNN path against the XLA
reference at realistic sizes, values and gradients. bfloat16 tolerances: 4e-2 absolute + relative against the
float32 reference on the same bf16 inputs (one bf16 rounding of p and of the output); float32: 1e-2 (the
kernel's dots may run in TF32 on the GPU, so this is looser than the CPU interpret tests). Run with
`bash tests/gpu/run_gpu_checks.sh`."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jdistill.kernels import gated_attention
from tests.kernels.attention_cases import assert_close, make_inputs, reference_in_float32, values_and_grads

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (jax backend is not gpu)")

CASES = [  # (q_len, kv_len, heads, kv_heads, head_dim, gate, causal, segments)
    (1000, 1000, 8, 2, 128, "headwise", True, False),
    (777, 1031, 4, 4, 64, "elementwise", True, False),
    (512, 512, 4, 1, 256, "none", False, True),
    (1024, 1024, 8, 8, 128, "headwise", True, True),
]


def _check(impl, case, dtype, tol):
    q_len, kv_len, heads, kv_heads, head_dim, gate, causal, segments = case
    args, segment_ids, cotangent = make_inputs(0, 2, q_len, kv_len, heads, kv_heads, head_dim, gate, segments, dtype)
    kwargs = dict(causal=causal, segment_ids=segment_ids)
    out, grads = values_and_grads(functools.partial(gated_attention, impl=impl), args, cotangent, **kwargs)
    with jax.default_matmul_precision("highest"):
        want_out, want_grads = reference_in_float32(args, cotangent, **kwargs)
    assert_close(out, want_out, tol, tol, f"{impl} output")
    for name, got, want in zip(["dq", "dk", "dv", "dgate"][: len(want_grads)], grads, want_grads, strict=True):
        assert_close(got, want, 2 * tol, 2 * tol, f"{impl} {name}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 4e-2), (jnp.float32, 1e-2)], ids=["bf16", "f32"])
def test_pallas_gpu_matches_reference(case, dtype, tol):
    _check("pallas_gpu", case, dtype, tol)


CUDNN_CASES = [case for case in CASES if case[0] % 2 == 0 and case[1] % 2 == 0]  # cuDNN's masks need even lengths


@pytest.mark.parametrize("case", CUDNN_CASES, ids=str)
def test_cudnn_path_matches_reference(case):
    _check("cudnn", case, jnp.bfloat16, 4e-2)


def test_cudnn_refuses_odd_masked_lengths_in_one_line():
    from jdistill.kernels.support import KernelUnsupportedError

    odd = next(case for case in CASES if case not in CUDNN_CASES)
    with pytest.raises(KernelUnsupportedError, match="needs even lengths, got q_len 777 and kv_len 1031"):
        _check("cudnn", odd, jnp.bfloat16, 4e-2)


def test_auto_picks_cudnn_and_the_pallas_kernel_where_cudnn_cannot_run():
    from jdistill.kernels import attention, support

    assert attention._auto_impl() == "cudnn"
    for case, dtype, want in ((CASES[0], jnp.bfloat16, "cudnn"), (CASES[0], jnp.float32, "pallas_gpu")):
        q_len, kv_len, heads, kv_heads, head_dim, _, causal, _ = case
        q = jnp.zeros((1, q_len, heads, head_dim), dtype)
        k = jnp.zeros((1, kv_len, kv_heads, head_dim), dtype)

        def problem(impl, platform, q=q, k=k, causal=causal):
            return attention._problem(impl, q, k, causal, None, None, platform)

        assert support.choose("attention_impl", support.ATTENTION_AUTO, "xla", problem) == want

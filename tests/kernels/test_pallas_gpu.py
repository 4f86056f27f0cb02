"""The Pallas GPU flash kernel (run in interpret mode on CPU) against the XLA reference: values and gradients.

Tolerances: float32 values 2e-5 and gradients 1e-4 (absolute and relative) — only summation order differs.
bfloat16: the kernel on bfloat16 inputs against the float32 reference on the same (bf16-rounded) inputs,
values within 3e-2 and gradients within 6e-2 absolute + relative — the tolerance of one bf16 rounding of p
and of the output on O(1) values; the XLA reference in bf16 is held to the same bound as a control.
"""

import functools

import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.kernels import gated_attention
from jdistill.kernels.pallas_gpu import gated_flash_attention
from tests.kernels.attention_cases import assert_close, make_inputs, reference_in_float32, values_and_grads

GATES = st.sampled_from(["none", "headwise", "elementwise"])
HEADS = st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)])


def small_blocks(q, k, v, gate, **kwargs):
    return gated_flash_attention(q, k, v, gate, interpret=True, block_q=8, block_k=8, **kwargs)


def check(attention, args, segment_ids, cotangent, causal, atol, rtol):
    kwargs = dict(causal=causal, segment_ids=segment_ids)
    out, grads = values_and_grads(attention, args, cotangent, **kwargs)
    want_out, want_grads = reference_in_float32(args, cotangent, **kwargs)
    assert_close(out, want_out, atol, rtol, "output")
    for name, got, want in zip(["dq", "dk", "dv", "dgate"][: len(want_grads)], grads, want_grads, strict=True):
        assert_close(got, want, 5 * atol, 5 * rtol, name)


@settings(max_examples=10, deadline=None)
@given(
    q_len=st.integers(1, 19),
    kv_extra=st.integers(-3, 6),
    heads=HEADS,
    head_dim=st.sampled_from([4, 8]),
    gate_kind=GATES,
    causal=st.booleans(),
    segments=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_float32_values_and_grads_match_reference(q_len, kv_extra, heads, head_dim, gate_kind, causal, segments, seed):
    kv_len = q_len if segments else max(1, q_len + kv_extra)
    args, segment_ids, cotangent = make_inputs(
        seed, 2, q_len, kv_len, *heads, head_dim, gate_kind, segments, jnp.float32
    )
    check(small_blocks, args, segment_ids, cotangent, causal, atol=2e-5, rtol=2e-5)


@settings(max_examples=3, deadline=None)
@given(
    q_len=st.integers(5, 21),
    heads=HEADS,
    gate_kind=GATES,
    causal=st.booleans(),
    segments=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bfloat16_values_and_grads_match_reference(q_len, heads, gate_kind, causal, segments, seed):
    args, segment_ids, cotangent = make_inputs(seed, 1, q_len, q_len, *heads, 8, gate_kind, segments, jnp.bfloat16)
    check(small_blocks, args, segment_ids, cotangent, causal, atol=3e-2, rtol=3e-2)
    reference_bf16 = functools.partial(gated_attention, impl="xla")
    check(reference_bf16, args, segment_ids, cotangent, causal, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("head_dim,gate_kind", [(64, "elementwise"), (128, "headwise")])
def test_production_head_dims_through_the_dispatcher(head_dim, gate_kind):
    args, segment_ids, cotangent = make_inputs(1, 1, 20, 20, 2, 1, head_dim, gate_kind, True, jnp.float32)
    interpret = functools.partial(gated_attention, impl="interpret")
    check(interpret, args, segment_ids, cotangent, True, atol=2e-5, rtol=2e-5)


def test_fully_masked_rows_are_zero_with_zero_gradients():
    # kv_len < q_len with causal alignment: the first query rows see no key at all.
    args, _, cotangent = make_inputs(3, 1, 9, 4, 2, 2, 8, "headwise", False, jnp.float32)
    out, grads = values_and_grads(small_blocks, args, cotangent, causal=True)
    assert jnp.all(out[:, :5] == 0) and jnp.all(grads[0][:, :5] == 0) and jnp.all(grads[3][:, :5] == 0)


@pytest.mark.parametrize("head_dim,gate_kind", [(128, "headwise"), (64, "elementwise")])
def test_kernels_lower_to_triton_for_cuda_on_this_cpu(head_dim, gate_kind):
    # Lowering (not PTX compilation) runs the Pallas Triton lowering rules: block shapes, dots, masks, loops.
    import jax

    seq, dtype = 1100, jnp.bfloat16

    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    def forward(q, k, v, g):
        return gated_flash_attention(q, k, v, g, causal=True, segment_ids=segments)

    gate = spec(1, seq, 4) if gate_kind == "headwise" else spec(1, seq, 4, head_dim)
    segments = jnp.zeros((1, seq), jnp.int32)
    backward = jax.grad(lambda *args: jnp.sum(forward(*args).astype(jnp.float32)), argnums=(0, 1, 2, 3))
    args = (spec(1, seq, 4, head_dim), spec(1, seq, 2, head_dim), spec(1, seq, 2, head_dim), gate)
    for program, kernels in [(forward, 1), (backward, 3)]:
        text = jax.jit(program).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == kernels

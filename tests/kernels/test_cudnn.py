"""The cuDNN path's masking and gate logic, run on CPU through `jax.nn`'s XLA implementation (the cuDNN
kernel itself is checked by tests/gpu on a GPU). float32, tolerance 2e-5."""

import jax.numpy as jnp
import pytest

from jdistill.kernels import gated_attention_reference
from jdistill.kernels.cudnn import gated_attention_cudnn
from tests.kernels.attention_cases import assert_close, make_inputs


@pytest.mark.parametrize(
    "q_len,kv_len,causal,segments,gate_kind",
    [
        (7, 7, True, True, "elementwise"),
        (9, 5, True, False, "none"),
        (5, 9, True, False, "headwise"),
        (6, 6, False, True, "none"),
    ],
)
def test_cudnn_path_logic_matches_reference_on_cpu(q_len, kv_len, causal, segments, gate_kind):
    args, segment_ids, _ = make_inputs(0, 2, q_len, kv_len, 4, 2, 8, gate_kind, segments, jnp.float32)
    got = gated_attention_cudnn(*args, causal=causal, segment_ids=segment_ids, implementation="xla")
    want = gated_attention_reference(*args, causal=causal, segment_ids=segment_ids)
    assert_close(got, want, 2e-5, 2e-5, "output")

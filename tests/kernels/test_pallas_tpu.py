"""The Pallas Mosaic TPU flash kernel: values and gradients in interpret mode on CPU against the XLA reference
(float32, tolerances 2e-5 on values and 1e-4 on gradients — only summation order differs), and an
ahead-of-time compile for a TPU v5e topology (libtpu on this CPU) at seq 2048, head dim 128, bfloat16, causal,
headwise gate, segment ids, forward and backward; and the gated delta rule's chunked forward kernel (with its
XLA chunked backward) at the same size; plus variants (head dims 64/256, elementwise/no gate, odd lengths,
float32) forward and backward."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.kernels.pallas_tpu import gated_flash_attention_tpu
from tests.kernels.attention_cases import make_inputs
from tests.kernels.test_pallas_gpu import GATES, HEADS, check


def small_blocks(q, k, v, gate, **kwargs):
    return gated_flash_attention_tpu(q, k, v, gate, interpret=True, block_q=8, block_k=8, **kwargs)


@settings(max_examples=4, deadline=None)
@given(
    q_len=st.integers(1, 17),
    kv_extra=st.integers(-3, 5),
    heads=HEADS,
    gate_kind=GATES,
    causal=st.booleans(),
    segments=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_float32_values_and_grads_match_reference(q_len, kv_extra, heads, gate_kind, causal, segments, seed):
    kv_len = q_len if segments else max(1, q_len + kv_extra)
    args, segment_ids, cotangent = make_inputs(seed, 1, q_len, kv_len, *heads, 8, gate_kind, segments, jnp.float32)
    check(small_blocks, args, segment_ids, cotangent, causal, atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install libtpu)")
def test_tpu_kernels_compile_ahead_of_time_at_seq_2048():
    script = Path(__file__).with_name("tpu_aot_compile.py")
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_name = {report["program"]: report for report in reports}
    assert by_name["forward"]["platform"] == "tpu"
    assert any("gated_flash_fwd_tpu" in name for name in by_name["forward"]["kernels"])
    backward_kernels = " ".join(by_name["backward"]["kernels"])
    assert "gated_flash_bwd_dq_tpu" in backward_kernels and "gated_flash_bwd_dkdv_tpu" in backward_kernels
    assert any("gated_delta_rule_fwd_tpu" in name for name in by_name["delta_rule_forward"]["kernels"])
    assert all(report["platform"] == "tpu" for report in reports) and len(reports) == 10
    for name, report in by_name.items():  # other head dims, gates, odd lengths, float32
        if name.startswith("variant_"):
            assert report["kernels"], name


def test_values_and_grads_in_tpu_semantics_interpret_mode():
    # pltpu.InterpretParams simulates TPU memory spaces, scratch and grid order (generic interpret mode does not).
    from jax.experimental.pallas import tpu as pltpu

    def tpu_interpret(q, k, v, gate, **kwargs):
        return gated_flash_attention_tpu(
            q, k, v, gate, interpret=pltpu.InterpretParams(), block_q=8, block_k=8, **kwargs
        )

    args, segment_ids, cotangent = make_inputs(0, 1, 12, 12, 2, 1, 8, "headwise", True, jnp.float32)
    check(tpu_interpret, args, segment_ids, cotangent, True, atol=2e-5, rtol=2e-5)

"""`impl="auto"` on this CPU backend picks the XLA paths."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.kernels import gated_attention, gated_attention_reference, gated_delta_rule
from jdistill.kernels.attention import _auto_impl
from jdistill.kernels.delta_rule import _auto_impl as _delta_auto_impl


def test_auto_is_xla_on_cpu():
    assert _auto_impl() == "xla" and _delta_auto_impl() == "chunked"
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 2, 8)), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(gated_attention(x, x, x, causal=True)), np.asarray(gated_attention_reference(x, x, x, causal=True))
    )


def test_unknown_delta_rule_impl_is_rejected():
    x = jnp.zeros((1, 2, 1, 4))
    g = jnp.zeros((1, 2, 1))
    with pytest.raises(ValueError, match="impl must be one of"):
        gated_delta_rule(x, x, x, g, g, impl="magic")


def test_auto_takes_the_first_preferred_kernel_that_runs_the_call(monkeypatch, caplog):
    from jdistill.kernels import support

    monkeypatch.setattr(support, "target_platform", lambda: "gpu")
    monkeypatch.setattr(support, "_reported", set())
    caplog.set_level("INFO", logger=support.LOG.name)
    table = {"gpu": ("fast", "slow")}
    problems = {"fast": "float32 inputs", "slow": None}
    assert support.choose("k", table, "xla", lambda impl, platform: problems[impl]) == "slow"
    assert "'fast' cannot run: float32 inputs" in caplog.text
    problems["fast"] = None
    assert support.choose("k", table, "xla", lambda impl, platform: problems[impl]) == "fast"
    problems.update(fast="a", slow="b")
    assert support.choose("k", table, "xla", lambda impl, platform: problems[impl]) == "xla"
    assert support.choose("k", {}, "xla", lambda impl, platform: None) == "xla"
    assert support.ATTENTION_AUTO["gpu"] == ("cudnn", "pallas_gpu")  # measured order (docs/benchmarks.md)

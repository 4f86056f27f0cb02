"""No silent kernel fallback: an explicitly requested attention / delta-rule implementation that cannot run a
call raises one line naming it and the reason (a `UserError`: the CLI prints it alone, exit 2), and a config that
asks for one is refused when it is loaded; `impl="auto"` logs once per distinct reason which implementation it
chose. The platform is faked by patching `support.target_platform` (the kernels themselves only run here in
interpret mode), except in the mesh test, which builds an abstract TPU mesh."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.configs import load_config
from jdistill.errors import ConfigError, UserError
from jdistill.kernels import (
    KernelUnsupportedError,
    attention,
    delta_rule,
    gated_attention,
    gated_attention_reference,
    gated_delta_rule,
    support,
)
from jdistill.kernels.delta_rule_pallas import delta_rule_pallas
from jdistill.kernels.pallas_gpu import gated_flash_attention
from jdistill.kernels.pallas_tpu import gated_flash_attention_tpu


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    monkeypatch.setattr(support, "_reported", set())


@pytest.fixture
def platform(monkeypatch):
    return lambda name: monkeypatch.setattr(support, "target_platform", lambda: name)


def qkv(head_dim=64, q_len=6, kv_len=None, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    normal = lambda length: jnp.asarray(rng.normal(size=(1, length, 2, head_dim)), dtype)
    return normal(q_len), normal(kv_len or q_len), normal(kv_len or q_len)


def delta_inputs(key_dim=16, value_dim=16, seq=5):
    rng = np.random.default_rng(1)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    q, k, v = normal(1, seq, 2, key_dim), normal(1, seq, 2, key_dim), normal(1, seq, 2, value_dim)
    return q, k, v, -jnp.abs(normal(1, seq, 2)), jax.nn.sigmoid(normal(1, seq, 2))


def assert_one_line_user_error(error, impl):
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message and repr(impl) in message, message


ODD_SEGMENTS = jnp.zeros((1, 7), jnp.int32)
EXPLICIT_ATTENTION = [  # (impl, platform, inputs, call options, reason)
    ("pallas_gpu", "cpu", {}, {}, "needs a GPU and this program is traced for cpu"),
    ("pallas_gpu", "tpu", {}, {}, "needs a GPU and this program is traced for tpu"),
    ("pallas_tpu", "gpu", {}, {}, "needs a TPU"),
    ("cudnn", "tpu", {"dtype": jnp.bfloat16}, {}, "needs a GPU"),
    ("pallas_gpu", "gpu", {"head_dim": 96}, {}, "head_dim 96 is not one of 64, 128, 256"),
    ("pallas_tpu", "tpu", {"head_dim": 32}, {}, "head_dim 32 is not one of 64, 128, 256"),
    ("pallas_tpu", "tpu", {"dtype": jnp.float16}, {}, "dtype float16 is not one of float32, bfloat16"),
    ("pallas_gpu", "gpu", {}, {"window": 4}, "sliding-window"),
    ("pallas_tpu", "tpu", {}, {"window": 4}, "sliding-window"),
    ("interpret", "cpu", {}, {"window": 4}, "sliding-window"),
    ("cudnn", "gpu", {"dtype": jnp.bfloat16}, {"window": 4}, "sliding-window"),
    ("cudnn", "gpu", {}, {}, "dtype float32 is not one of bfloat16, float16"),
    ("cudnn", "gpu", {"head_dim": 100, "dtype": jnp.bfloat16}, {}, "head_dim 100 is not a multiple of 8"),
    ("cudnn", "gpu", {"q_len": 7, "dtype": jnp.bfloat16}, {"segment_ids": ODD_SEGMENTS}, "even lengths"),
    ("cudnn", "gpu", {"q_len": 6, "kv_len": 7, "dtype": jnp.bfloat16}, {"causal": True}, "even lengths"),
]


@pytest.mark.parametrize(
    "impl,on,inputs,options,reason",
    EXPLICIT_ATTENTION,
    ids=[f"{case[0]}-{case[4][:24]}" for case in EXPLICIT_ATTENTION],
)
def test_explicit_attention_that_cannot_run_raises(platform, impl, on, inputs, options, reason):
    platform(on)
    with pytest.raises(KernelUnsupportedError, match=f"attention_impl='{impl}' cannot run: .*{reason}") as error:
        gated_attention(*qkv(**inputs), impl=impl, **options)
    assert_one_line_user_error(error, impl)


def test_the_error_keeps_its_type_through_jit_tracing():
    q, k, v = qkv()
    with pytest.raises(KernelUnsupportedError, match="'pallas_tpu' cannot run"):
        jax.jit(lambda q, k, v: gated_attention(q, k, v, impl="pallas_tpu"))(q, k, v)


def test_unknown_attention_impl_is_a_user_error():
    with pytest.raises(KernelUnsupportedError, match=r"attention_impl must be one of .*'magic'"):
        gated_attention(*qkv(), impl="magic")


def test_xla_runs_a_window_whatever_the_platform(platform):
    platform("gpu")
    q, k, v = qkv(head_dim=12)
    np.testing.assert_array_equal(
        gated_attention(q, k, v, causal=True, window=3, impl="xla"),
        gated_attention_reference(q, k, v, causal=True, window=3),
    )


def test_the_mesh_in_context_decides_the_platform():
    from jax._src.mesh import AbstractDevice  # what a mesh over TPU topology devices carries (AOT compiles)

    tpu_mesh = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=AbstractDevice("TPU v5 lite", None, "tpu"))
    assert support.target_platform() == jax.default_backend() == "cpu"
    with jax.sharding.use_abstract_mesh(tpu_mesh):
        assert support.target_platform() == "tpu"
        assert support.attention_problem("pallas_tpu", head_dim=128, dtype=jnp.bfloat16) is None
        assert "traced for tpu" in support.attention_problem("pallas_gpu", head_dim=128, dtype=jnp.bfloat16)


def auto_records(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "jdistill.kernels"]


def test_auto_on_cpu_runs_xla_and_says_so_once(caplog):
    caplog.set_level(logging.INFO, logger="jdistill.kernels")
    q, k, v = qkv()
    for causal in (True, True, False):  # three calls, a new trace under jit too: one message
        got = jax.jit(lambda q, k, v, c=causal: gated_attention(q, k, v, causal=c))(q, k, v)
        np.testing.assert_array_equal(got, gated_attention_reference(q, k, v, causal=causal))
    assert auto_records(caplog) == [(logging.INFO, "attention_impl='auto' runs 'xla': no fused kernel for cpu")]


def test_auto_passes_over_a_kernel_that_cannot_run_with_one_warning_per_reason(platform, caplog):
    caplog.set_level(logging.INFO, logger="jdistill.kernels")
    platform("gpu")
    for head_dim in (96, 96, 32):
        q, k, v = qkv(head_dim=head_dim)
        np.testing.assert_array_equal(gated_attention(q, k, v), gated_attention_reference(q, k, v))
    platform("tpu")
    gated_attention(*qkv(), window=2)
    assert auto_records(caplog) == [
        (
            logging.WARNING,
            "attention_impl='auto' runs 'xla': 'cudnn' cannot run: dtype float32 is not one of bfloat16, float16; "
            "'pallas_gpu' cannot run: head_dim 96 is not one of 64, 128, 256",
        ),
        (
            logging.WARNING,
            "attention_impl='auto' runs 'xla': 'cudnn' cannot run: dtype float32 is not one of bfloat16, float16; "
            "'pallas_gpu' cannot run: head_dim 32 is not one of 64, 128, 256",
        ),
        (
            logging.WARNING,
            "attention_impl='auto' runs 'xla': 'pallas_tpu' cannot run: sliding-window attention is "
            "implemented only by the XLA reference ('xla')",
        ),
    ]


def test_auto_on_gpu_runs_the_fused_kernel_where_cudnn_cannot(platform, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="jdistill.kernels")
    platform("gpu")
    ran = []
    monkeypatch.setitem(attention._IMPLS, "pallas_gpu", lambda *args, **kwargs: ran.append(1) or args[0])
    q, k, v = qkv(head_dim=64)
    gated_attention(q, k, v, causal=True)
    assert ran == [1]
    assert auto_records(caplog) == [
        (
            logging.INFO,
            "attention_impl='auto' runs 'pallas_gpu': 'cudnn' cannot run: dtype float32 is not one of bfloat16, "
            "float16; the next choice for gpu",
        )
    ]


def test_auto_on_gpu_runs_cudnn_first_when_it_can(platform, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="jdistill.kernels")
    platform("gpu")
    ran = []
    for name in ("cudnn", "pallas_gpu"):
        monkeypatch.setitem(attention._IMPLS, name, lambda *args, name=name, **kwargs: ran.append(name) or args[0])
    gated_attention(*qkv(head_dim=64, dtype=jnp.bfloat16), causal=True)
    assert ran == ["cudnn"]
    assert auto_records(caplog) == [(logging.INFO, "attention_impl='auto' runs 'cudnn': the first choice for gpu")]


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"head_dim": 96}, "head_dim 96 is not one of"),
        ({"block_q": 96}, "block_q=96 is not a power of two >= 16"),
        ({"block_k": 8}, "block_k=8 is not a power of two >= 16"),
        ({"block_q": -4}, "block_q=-4 is not a positive"),
    ],
)
def test_gpu_flash_kernel_rejects_what_triton_cannot_tile(kwargs, reason):
    q, k, v = qkv(head_dim=kwargs.pop("head_dim", 64))
    with pytest.raises(KernelUnsupportedError, match=f"pallas_gpu flash attention cannot run: {reason}"):
        gated_flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kwargs,reason",
    [({"dtype": jnp.float16}, "dtype float16"), ({"block_q": 64}, "block_q=64 is not a power of two >= 128")],
)
def test_tpu_flash_kernel_rejects_what_mosaic_cannot_compile(kwargs, reason):
    block_q = kwargs.pop("block_q", 512)
    with pytest.raises(KernelUnsupportedError, match=f"pallas_tpu flash attention cannot run: {reason}"):
        gated_flash_attention_tpu(*qkv(**kwargs), block_q=block_q)


def test_interpret_mode_takes_any_block_and_head_dim():
    q, k, v = qkv(head_dim=12)
    for kernel in (gated_flash_attention, gated_flash_attention_tpu):  # traced only: the checks run at trace time
        out = jax.eval_shape(lambda q, k, v, f=kernel: f(q, k, v, interpret=True, block_q=4, block_k=2), q, k, v)
        assert out.shape == q.shape


EXPLICIT_DELTA = [  # (impl, platform, (key_dim, value_dim), reason)
    ("pallas_gpu", "cpu", (16, 16), "needs a GPU and this program is traced for cpu"),
    ("pallas_tpu", "gpu", (16, 16), "needs a TPU"),
    ("pallas_gpu", "gpu", (24, 16), "key head dim 24 is not a power of two >= 16"),
    ("pallas_gpu", "gpu", (16, 8), "value head dim 8 is not a power of two >= 16"),
]


@pytest.mark.parametrize("impl,on,dims,reason", EXPLICIT_DELTA)
def test_explicit_delta_rule_that_cannot_run_raises(platform, impl, on, dims, reason):
    platform(on)
    with pytest.raises(KernelUnsupportedError, match=f"delta_rule_impl='{impl}' cannot run: .*{reason}") as error:
        gated_delta_rule(*delta_inputs(*dims), impl=impl)
    assert_one_line_user_error(error, impl)


def test_delta_rule_auto_reports_its_choice_once(platform, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="jdistill.kernels")
    ran = []
    for name in ("chunked", "pallas_gpu"):
        monkeypatch.setitem(delta_rule._IMPLS, name, lambda *args, name=name: ran.append(name) or (args[2], None))
    gated_delta_rule(*delta_inputs(24, 16))
    platform("gpu")
    for dims in [(24, 16), (24, 16), (16, 32)]:
        gated_delta_rule(*delta_inputs(*dims))
    assert ran == ["chunked", "chunked", "chunked", "pallas_gpu"]
    assert auto_records(caplog) == [
        (logging.INFO, "delta_rule_impl='auto' runs 'chunked': no fused kernel for cpu"),
        (
            logging.WARNING,
            "delta_rule_impl='auto' runs 'chunked': 'pallas_gpu' cannot run: key head dim 24 is not "
            "a power of two >= 16",
        ),
        (logging.INFO, "delta_rule_impl='auto' runs 'pallas_gpu': the first choice for gpu"),
    ]


def test_delta_rule_pallas_rejects_an_unknown_backend_and_untileable_dims():
    with pytest.raises(KernelUnsupportedError, match="backend must be 'gpu' or 'tpu', got 'cuda'"):
        delta_rule_pallas(*delta_inputs(), backend="cuda")
    with pytest.raises(KernelUnsupportedError, match="pallas_gpu delta rule cannot run: key head dim 24"):
        delta_rule_pallas(*delta_inputs(24, 16), backend="gpu")


@pytest.mark.parametrize(
    "overrides,field,reason",
    [
        (
            ["student.model.attention_impl=pallas_gpu", "student.model.head_dim=96"],
            "student.model.attention_impl",
            "pallas_gpu cannot run: head_dim 96",
        ),
        (["teacher.model.attention_impl=cudnn"], "teacher.model.attention_impl", "cudnn cannot run: dtype float32"),
        (
            ["student.model.attention_impl=pallas_tpu", "student.model.head_dim=64", "student.model.sliding_window=8"],
            "student.model.attention_impl",
            "sliding-window",
        ),
        (["student.model.attention_impl=fast"], "student.model.attention_impl", "one of"),
    ],
)
def test_a_config_asking_for_a_kernel_that_cannot_run_is_refused_when_loaded(overrides, field, reason):
    with pytest.raises(ConfigError, match=f"{field} expected .*{reason}"):
        load_config("default", overrides)


def test_a_config_check_leaves_the_platform_to_the_traced_step():
    # An ahead-of-time TPU compile loads the config on a CPU host: the platform is checked at trace time.
    load_config("default", ["student.model.attention_impl=pallas_tpu", "student.model.head_dim=64"])


def test_a_deltanet_config_is_checked_too():
    from jdistill.models.config import ModelConfig

    config = ModelConfig(kind="lm", layer_pattern="DA", delta_rule_impl="pallas_gpu", linear_key_head_dim=24)
    assert [field for field, _ in config.validate()] == ["delta_rule_impl"]
    assert (
        ModelConfig(kind="lm", layer_pattern="A", delta_rule_impl="pallas_gpu", linear_key_head_dim=24).validate() == []
    )

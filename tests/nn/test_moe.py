"""Mixture-of-experts layer: routing, dropless dispatch (ragged_dot == blocked == one-hot == numpy), aux losses,
the module."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jdistill.nn import moe as moe_lib
from jdistill.nn import moe_blocked
from jdistill.nn.moe import MoE

# One compiled function each (eager dispatch compiles every small op separately).
route = jax.jit(moe_lib.route, static_argnums=(1, 2))
ragged_dot = jax.jit(functools.partial(moe_lib.moe_ragged, impl="ragged_dot"))
blocked = jax.jit(functools.partial(moe_lib.moe_ragged, impl="blocked"))
moe_one_hot = jax.jit(moe_lib.moe_one_hot)
load_balancing_loss = jax.jit(moe_lib.load_balancing_loss, static_argnums=2)
router_z_loss = jax.jit(moe_lib.router_z_loss)


def random_module(build, seed=0, scale=0.3):
    """The module `build()` makes, with N(0, scale^2) weights drawn by numpy: built abstractly (`nnx.eval_shape`),
    so no initialiser is compiled (eager initialisation compiles one program per shape)."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda leaf: jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype), state)
    return nnx.merge(graphdef, state)


def _softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _numpy_route(logits, k, norm):
    probs = _softmax(logits.astype(np.float64))
    experts = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, experts, -1)
    if norm:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights, experts


def _numpy_moe(x, weights, experts, w_gate, w_up, w_down):
    """Token by token, chosen expert by chosen expert."""
    out = np.zeros_like(x, dtype=np.float64)
    for t in range(x.shape[0]):
        for j in range(experts.shape[1]):
            e = experts[t, j]
            hidden = _silu(x[t] @ w_gate[e]) * (x[t] @ w_up[e])
            out[t] += weights[t, j] * (hidden @ w_down[e])
    return out


def _problem(tokens, d, f, num_experts, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, d)).astype(np.float32)
    logits = rng.normal(size=(tokens, num_experts)).astype(np.float32) * 2
    w_gate = (rng.normal(size=(num_experts, d, f)) / np.sqrt(d)).astype(np.float32)
    w_up = (rng.normal(size=(num_experts, d, f)) / np.sqrt(d)).astype(np.float32)
    w_down = (rng.normal(size=(num_experts, f, d)) / np.sqrt(f)).astype(np.float32)
    return x, logits, w_gate, w_up, w_down


@pytest.mark.parametrize("norm", [True, False])
def test_route_matches_numpy(norm):
    logits = np.random.default_rng(0).normal(size=(9, 6)).astype(np.float32) * 3
    weights, experts = route(jnp.asarray(logits), 3, norm)
    expected_w, expected_e = _numpy_route(logits, 3, norm)
    np.testing.assert_array_equal(experts, expected_e)
    np.testing.assert_allclose(weights, expected_w, rtol=1e-5)
    assert experts.dtype == jnp.int32 and weights.dtype == jnp.float32
    sums = np.asarray(weights).sum(-1)
    assert np.allclose(sums, 1.0) == norm  # renormalised top-k weights sum to 1, raw probabilities do not


def test_top_one_with_normalisation_is_weight_one():
    weights, _ = route(jnp.asarray(np.random.default_rng(1).normal(size=(5, 4))), 1, True)
    np.testing.assert_allclose(weights, 1.0, rtol=1e-6)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
    tokens=st.integers(1, 12),
    num_experts=st.integers(1, 6),
    k=st.integers(1, 6),
    norm=st.booleans(),
    seed=st.integers(0, 3),
)
def test_ragged_and_one_hot_equal_the_numpy_combine(tokens, num_experts, k, norm, seed):
    k = min(k, num_experts)
    x, logits, w_gate, w_up, w_down = _problem(tokens, 8, 6, num_experts, k, seed)
    weights, experts = route(jnp.asarray(logits), k, norm)
    expected = _numpy_moe(x, np.asarray(weights), np.asarray(experts), w_gate, w_up, w_down)
    for dispatch in (ragged_dot, blocked, moe_one_hot):
        np.testing.assert_allclose(dispatch(x, weights, experts, w_gate, w_up, w_down), expected, atol=2e-5)


def _grads(dispatch, x, weights, experts, w_gate, w_up, w_down):
    """(values, gradients with respect to x, the routing weights and the three expert weights) of a non-linear
    read-out of `dispatch`."""

    def loss(x, weights, w_gate, w_up, w_down):
        y = dispatch(x, weights, experts, w_gate, w_up, w_down)
        return jnp.sum(jnp.sin(y)), y  # every output element gets its own cotangent

    args = map(jnp.asarray, (x, weights, w_gate, w_up, w_down))
    grads, values = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)
    return values, grads


def test_blocked_dispatch_batches_and_overflow_blocks_equal_one_hot_in_values_and_gradients():
    x, _, w_gate, w_up, w_down = _problem(96, 8, 6, 4, 2, seed=1)
    rng = np.random.default_rng(1)
    # expert 0: all 96 tokens; expert 3 (the last one in sorted order): 70; expert 2: 26; expert 1: none.
    experts = np.stack([np.zeros(96, int), np.where(np.arange(96) < 70, 3, 2)], axis=1)
    experts[1::2] = experts[1::2, ::-1]  # either order within a token
    weights = rng.uniform(0.1, 1.0, size=(96, 2)).astype(np.float32)
    capacity = moe_blocked.capacity(192, 4)
    plan = jax.jit(moe_blocked.plan, static_argnums=(1, 2, 3))(jnp.asarray(experts), 4, capacity, 8)
    assert (capacity, moe_blocked.block_size(capacity), moe_blocked.BIG) == (48, 8, 4)
    # expert 0 overflows by 48 rows: one big block of 32, two small ones; expert 3 by 22: three small blocks, the
    # last one padded past the end of the sorted assignments
    assert (int(plan.big.used), int(plan.small.used)) == (1, 2 + 3)
    blocked_values, blocked_grads = _grads(blocked, x, weights, experts, w_gate, w_up, w_down)
    values, grads = _grads(moe_one_hot, x, weights, experts, w_gate, w_up, w_down)
    np.testing.assert_allclose(values, _numpy_moe(x, weights, experts, w_gate, w_up, w_down), atol=2e-5)
    np.testing.assert_allclose(blocked_values, values, atol=2e-5)
    for name, a, b in zip(("x", "weights", "w_gate", "w_up", "w_down"), blocked_grads, grads, strict=True):
        assert np.abs(np.asarray(b)).max() > 0, name
        np.testing.assert_allclose(a, b, atol=5e-5, err_msg=name)
    np.testing.assert_array_equal(blocked_grads[2][1], 0.0)  # no token chose expert 1


def test_dispatches_equal_numpy_and_each_other_in_values_and_gradients():
    x, logits, w_gate, w_up, w_down = _problem(4, 8, 6, 5, 2, seed=3)

    def loss(dispatch, x, logits, w_gate, w_up, w_down):
        weights, experts = moe_lib.route(logits, 2, True)
        y = dispatch(x, weights, experts, w_gate, w_up, w_down)
        return jnp.sum(jnp.sin(y)), y  # a non-linear read-out: every output element gets its own cotangent

    args = tuple(map(jnp.asarray, (x, logits, w_gate, w_up, w_down)))
    results = {
        name: jax.jit(jax.grad(lambda *a, fn=fn: loss(fn, *a), argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)
        for name, fn in (
            ("ragged_dot", functools.partial(moe_lib.moe_ragged, impl="ragged_dot")),
            ("blocked", functools.partial(moe_lib.moe_ragged, impl="blocked")),
            ("one_hot", moe_lib.moe_one_hot),
        )
    }
    weights, experts = _numpy_route(logits, 2, True)
    expected = _numpy_moe(x, weights, experts, w_gate, w_up, w_down)
    unused = np.setdiff1d(np.arange(5), experts)
    assert len(unused)  # seed 3 leaves expert 1 without tokens
    for name, (grads, values) in results.items():
        np.testing.assert_allclose(values, expected, atol=2e-5, err_msg=name)
        for a, b in zip(grads, results["one_hot"][0], strict=True):
            assert np.abs(np.asarray(b)).max() > 0
            np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)
        for expert in unused:  # an expert no token chose gets a zero gradient
            np.testing.assert_array_equal(grads[2][expert], 0.0)


def _numpy_load_balancing(probs, experts, num_experts):
    """transformers' `load_balancing_loss_func` of Qwen3-MoE for one layer."""
    counts = np.zeros(num_experts)
    np.add.at(counts, experts.reshape(-1), 1.0)
    return num_experts * np.sum(counts / probs.shape[0] * probs.mean(0))


def test_load_balancing_loss_matches_numpy_and_its_gradient_flows_through_the_probabilities_only():
    logits = np.random.default_rng(2).normal(size=(20, 6)).astype(np.float32) * 2
    probs = _softmax(logits)
    _, experts = route(jnp.asarray(logits), 2, True)
    value = load_balancing_loss(jnp.asarray(probs), experts, 6)
    np.testing.assert_allclose(value, _numpy_load_balancing(probs, np.asarray(experts), 6), rtol=1e-6)
    grad = jax.grad(load_balancing_loss)(jnp.asarray(probs), experts, 6)
    counts = np.bincount(np.asarray(experts).reshape(-1), minlength=6)
    np.testing.assert_allclose(grad, np.broadcast_to(6 * counts / 20 / 20, (20, 6)), rtol=1e-6)


@pytest.mark.parametrize("num_experts, k", [(4, 1), (6, 3)])
def test_load_balancing_limits(num_experts, k):
    tokens = 4 * num_experts
    # Uniform routing: every expert gets T k / E assignments and mean probability 1 / E -> the minimum, k.
    experts = np.stack([(np.arange(k) + t) % num_experts for t in range(tokens)])
    uniform = jnp.full((tokens, num_experts), 1.0 / num_experts)
    np.testing.assert_allclose(load_balancing_loss(uniform, jnp.asarray(experts), num_experts), k, rtol=1e-6)
    # Collapse: all tokens to the same k experts with all their probability there -> E.
    collapsed = np.zeros((tokens, num_experts))
    collapsed[:, :k] = 1.0 / k
    same = jnp.asarray(np.tile(np.arange(k), (tokens, 1)))
    np.testing.assert_allclose(load_balancing_loss(jnp.asarray(collapsed), same, num_experts), num_experts, rtol=1e-6)
    # Any routing that follows its own probabilities is at least k.
    logits = jnp.asarray(np.random.default_rng(k).normal(size=(tokens, num_experts)) * 3)
    _, chosen = route(logits, k, False)
    assert load_balancing_loss(jax.nn.softmax(logits), chosen, num_experts) >= k - 1e-5


def test_router_z_loss():
    logits = np.random.default_rng(4).normal(size=(7, 5)).astype(np.float32) * 4
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(router_z_loss(jnp.asarray(logits)), np.mean(lse**2), rtol=1e-6)
    np.testing.assert_allclose(router_z_loss(jnp.zeros((3, 8))), np.log(8) ** 2, rtol=1e-6)  # zero logits: log E


@pytest.fixture(scope="module")
def shared_moe():
    return random_module(lambda: MoE(16, 12, 6, 2, norm_topk_prob=False, shared_dim=10, rngs=nnx.Rngs(0)))


def test_module_matches_numpy(shared_moe):
    moe = shared_moe
    x = np.random.default_rng(5).normal(size=(2, 5, 16)).astype(np.float32)
    y, stats = nnx.jit(lambda m, x: m(x))(moe, jnp.asarray(x))
    tokens = x.reshape(-1, 16).astype(np.float64)
    logits = tokens @ np.asarray(moe.router[...])
    weights, experts = _numpy_route(logits, 2, False)
    params = [np.asarray(w[...], np.float64) for w in (moe.w_gate, moe.w_up, moe.w_down)]
    expected = _numpy_moe(tokens, weights, experts, *params)
    shared = moe.shared_expert
    hidden = _silu(tokens @ np.asarray(shared.gate.kernel[...])) * (tokens @ np.asarray(shared.up.kernel[...]))
    gate = 1.0 / (1.0 + np.exp(-(tokens @ np.asarray(moe.shared_gate.kernel[...]))))
    expected += gate * (hidden @ np.asarray(shared.down.kernel[...]))
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 16), expected, atol=1e-5)
    assert y.shape == x.shape
    counts = np.bincount(experts.reshape(-1), minlength=6)
    np.testing.assert_array_equal(stats["tokens_per_expert"], counts)
    np.testing.assert_allclose(
        stats["load_balancing_loss"], _numpy_load_balancing(_softmax(logits), experts, 6), rtol=1e-5
    )
    np.testing.assert_allclose(stats["router_z_loss"], np.mean(np.log(np.exp(logits).sum(-1)) ** 2), rtol=1e-5)
    assert float(stats["dropped_fraction"]) == 0.0


def test_parameters_carry_logical_axes(shared_moe):
    axes = {name: getattr(shared_moe, name).get_metadata()["out_sharding"] for name in ("router", "w_gate", "w_down")}
    assert axes == {
        "router": ("embed", "router"),
        "w_gate": ("expert", "embed", "mlp"),
        "w_down": ("expert", "mlp", "embed"),
    }
    assert shared_moe.shared_gate.kernel.get_metadata()["out_sharding"] == ("embed", "gate")


@pytest.mark.slow
def test_module_dispatches_agree():
    x = jax.random.normal(jax.random.key(0), (3, 4, 16))
    call = nnx.jit(lambda m, x: m(x)[0])
    y_ragged, y_one_hot = (
        call(MoE(16, 12, 6, 2, shared_dim=10, dispatch=dispatch, rngs=nnx.Rngs(0)), x)
        for dispatch in ("ragged", "one_hot")
    )
    np.testing.assert_allclose(y_ragged, y_one_hot, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_router():
    moe = MoE(16, 12, 6, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 16))
    y, stats = nnx.jit(lambda m, x: m(x))(moe, x)
    assert y.dtype == jnp.bfloat16 and moe.w_gate[...].dtype == jnp.float32
    assert stats["load_balancing_loss"].dtype == jnp.float32
    reference, _ = nnx.jit(lambda m, x: m(x))(MoE(16, 12, 6, 2, rngs=nnx.Rngs(0)), x)
    np.testing.assert_allclose(np.asarray(y, np.float32), reference, atol=0.05)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="top_k must be in"):
        MoE(8, 8, 4, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dispatch must be one of"):
        MoE(8, 8, 4, 2, dispatch="dense", rngs=nnx.Rngs(0))


def _lowered(platform):
    x, e, w = jnp.ones((16, 8)), jnp.zeros((16, 2), jnp.int32), jnp.ones((16, 2))
    w_in, w_out = jnp.ones((4, 8, 6)), jnp.ones((4, 6, 8))
    traced = jax.jit(moe_lib.moe_ragged).trace(x, w, e, w_in, w_in, w_out)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def test_default_grouped_matmul_follows_the_compiled_platform():
    assert "ragged_dot" not in _lowered("cpu")  # the blocked scan
    try:
        tpu = _lowered("tpu")
    except Exception as error:  # a jax without TPU lowering rules
        pytest.skip(f"no TPU lowering here: {error}")
    assert "ragged_dot" in tpu  # an ahead-of-time TPU compile from this CPU host gets the grouped-matmul instruction


def test_a_replaced_grouped_matmul_is_used(monkeypatch):
    calls = []

    def counting(x, w, group_sizes):
        calls.append(w.shape)
        return jax.lax.ragged_dot(x, w, group_sizes)

    monkeypatch.setattr(moe_lib, "grouped_matmul", counting)
    x, e, w = jnp.ones((4, 8)), jnp.zeros((4, 2), jnp.int32), jnp.ones((4, 2))
    jax.make_jaxpr(moe_lib.moe_ragged)(x, w, e, jnp.ones((3, 8, 6)), jnp.ones((3, 8, 6)), jnp.ones((3, 6, 8)))
    assert calls == [(3, 8, 6), (3, 8, 6), (3, 6, 8)]  # benchmarks swap the kernel this way

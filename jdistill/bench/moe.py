"""`jdistill bench moe [--json PATH]`: forward + backward tokens/s of the mixture-of-experts layer against a dense
SwiGLU MLP with the same ACTIVE parameters and against the naive one-hot dispatch, in one process.

Contenders, each `y = f(x)` for `x [tokens, d_model]`, timed as one jitted `value_and_grad` of `sum(y * c)` (a
fixed random cotangent c) with respect to the parameters and x:
  - `dense`: `jdistill.nn.mlp.GLUMLP` with hidden size top_k * expert_dim + shared_dim: the same multiply-adds per
    token as the routed experts (+ the shared expert); the target of the goal.
  - `moe`: `jdistill.nn.moe.MoE` as the models run it (router, top-k, the dropless grouped dispatch the layer picks
    for this backend: `jdistill.nn.moe_blocked` on CPU and NVIDIA GPUs, `jax.lax.ragged_dot` on TPU).
  - `moe_ragged_dot`: the same layer with `jax.lax.ragged_dot` forced (`moe_ragged(impl="ragged_dot")` while the
    program is traced); on CPU JAX expands it into E masked dense products.
  - `one_hot`: the layer with `dispatch="one_hot"`: every expert on every token (E / top_k times the work).
Times are medians over `repeats` rounds, the contenders called in alternating order within each round, after a
warm-up call (compilation). Ratios: `moe_over_dense` = time(moe) / time(dense) (goal: <= 1.5),
`one_hot_over_moe` = time(one_hot) / time(moe) (what routing saves over the naive dispatch). Each call's process
CPU time is kept too (`cpu_ms`, `moe_over_dense_cpu`): on a machine shared with other jobs it stays comparable
where wall times do not; the load average at the start is recorded (`load_average`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
from pathlib import Path

from jdistill.bench import int_list
from jdistill.errors import ConfigError
from jdistill.io import strict_json

GOAL = 1.5  # the MoE layer's fwd+bwd time within 1.5x that of the dense layer of equal active parameters
CONTENDERS = ("dense", "moe", "moe_ragged_dot", "one_hot")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive = _at_least(1)


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `bench moe` to the `jdistill bench` parser."""
    bench = bench_subparsers.add_parser(
        "moe", help="MoE layer fwd+bwd tokens/s vs a dense MLP of equal active parameters and the one-hot dispatch"
    )
    bench.add_argument("--tokens", type=int_list, default=[512, 2048, 8192], help="token counts (default 512..8192)")
    bench.add_argument("--d-model", type=_positive, default=256)
    bench.add_argument("--experts", type=_positive, default=8)
    bench.add_argument("--top-k", type=_positive, default=2)
    bench.add_argument("--expert-dim", type=_positive, default=256, help="hidden size of each expert")
    bench.add_argument("--shared-dim", type=_at_least(0), default=0, help="shared expert hidden size (0: none)")
    bench.add_argument("--repeats", type=_positive, default=5, help="timed rounds (median)")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.set_defaults(func=run_bench_moe)


@contextlib.contextmanager
def _grouped_impl(impl):
    """Trace the MoE layer with its sorted dispatch forced to `impl` (None: the layer's own choice)."""
    from jdistill.nn import moe

    if impl is None:
        yield
        return
    shipped = moe.DISPATCH["ragged"]
    moe.DISPATCH["ragged"] = functools.partial(moe.moe_ragged, impl=impl)
    try:
        yield
    finally:
        moe.DISPATCH["ragged"] = shipped


def _programs(tokens: int, d_model: int, experts: int, top_k: int, expert_dim: int, shared_dim: int) -> dict:
    """{name: a no-argument callable running one jitted fwd+bwd}, compiled (the first call happens here)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.nn.mlp import GLUMLP
    from jdistill.nn.moe import MoE

    x = jax.random.normal(jax.random.key(0), (tokens, d_model), jnp.float32)
    cotangent = jax.random.normal(jax.random.key(1), (tokens, d_model), jnp.float32)

    def moe_layer(dispatch: str = "ragged") -> MoE:
        return MoE(d_model, expert_dim, experts, top_k, shared_dim=shared_dim, dispatch=dispatch, rngs=nnx.Rngs(2))

    modules = {
        "dense": (GLUMLP(d_model, top_k * expert_dim + shared_dim, "silu", rngs=nnx.Rngs(2)), None),
        "moe": (moe_layer(), None),
        "moe_ragged_dot": (moe_layer(), "ragged_dot"),
        "one_hot": (moe_layer("one_hot"), None),
    }
    programs = {}
    for name, (module, impl) in modules.items():
        graphdef, params = nnx.split(module)

        def loss(params, x, graphdef=graphdef):
            out = nnx.merge(graphdef, params)(x)
            y = out[0] if isinstance(out, tuple) else out
            return jnp.sum(y * cotangent)

        with _grouped_impl(impl):
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
        jax.block_until_ready(step(params, x))
        programs[name] = lambda step=step, params=params: jax.block_until_ready(step(params, x))
    return programs


def measure(
    tokens: int, *, d_model: int, experts: int, top_k: int, expert_dim: int, shared_dim: int, repeats: int
) -> dict:
    """One row: fwd+bwd tokens/s of every contender at `tokens` tokens, and the ratios."""
    from jdistill.bench.train_step import time_interleaved

    programs = _programs(tokens, d_model, experts, top_k, expert_dim, shared_dim)
    wall, cpu = time_interleaved(programs, steps=repeats, warmup=0)
    seconds = {name: statistics.median(times) for name, times in wall.items()}
    cpu_seconds = {name: statistics.median(times) for name, times in cpu.items()}
    return {
        "tokens": tokens,
        "ms": {name: 1e3 * value for name, value in seconds.items()},
        "cpu_ms": {name: 1e3 * value for name, value in cpu_seconds.items()},
        "moe_over_dense_cpu": cpu_seconds["moe"] / cpu_seconds["dense"],
        "tokens_per_s": {name: tokens / value for name, value in seconds.items()},
        "moe_over_dense": seconds["moe"] / seconds["dense"],
        "moe_ragged_dot_over_dense": seconds["moe_ragged_dot"] / seconds["dense"],
        "one_hot_over_moe": seconds["one_hot"] / seconds["moe"],
    }


def run(
    tokens=(512, 2048, 8192),
    *,
    d_model=256,
    experts=8,
    top_k=2,
    expert_dim=256,
    shared_dim=0,
    repeats=5,
    json_path=None,
    printer=print,
) -> dict:
    """Every token count's row, the settings, and whether the goal holds at every count."""
    import jax

    from jdistill.bench.train_step import available_cores

    layer = dict(d_model=d_model, experts=experts, top_k=top_k, expert_dim=expert_dim, shared_dim=shared_dim)
    printer(
        f"MoE layer fwd+bwd on {jax.default_backend()} ({available_cores()} cores): d_model {d_model}, {experts} "
        f"experts, top-{top_k}, expert hidden {expert_dim}, shared {shared_dim}; dense hidden "
        f"{top_k * expert_dim + shared_dim} (same active parameters); median of {repeats}"
    )
    load = os.getloadavg()[0]
    printer(f"load average {load:.1f} at the start (wall times are only comparable on an otherwise idle machine)")
    header = " ".join(f"{name + ' tok/s':>20}" for name in CONTENDERS)
    printer(f"{'tokens':>7} {header}  moe/dense  one_hot/moe  moe/dense(cpu)")
    rows = []
    for count in tokens:
        row = measure(count, repeats=repeats, **layer)
        rows.append(row)
        printer(
            f"{count:>7} "
            + " ".join(f"{row['tokens_per_s'][name]:>20,.0f}" for name in CONTENDERS)
            + f"  {row['moe_over_dense']:>8.2f}x  {row['one_hot_over_moe']:>10.2f}x"
            + f"  {row['moe_over_dense_cpu']:>13.2f}x"
        )
    met = all(row["moe_over_dense"] <= GOAL for row in rows)
    printer(f"goal (moe within {GOAL}x of dense at every token count): {'met' if met else 'NOT met'}")
    results = {
        "settings": dict(layer, repeats=repeats, dense_hidden=top_k * expert_dim + shared_dim),
        "rows": rows,
        "goal": GOAL,
        "goal_met": met,
        "backend": jax.default_backend(),
        "cores": available_cores(),
        "load_average": load,
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
    }
    if json_path:
        path = Path(json_path)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(strict_json.dumps(results, indent=2) + "\n")
        temporary.replace(path)
    return results


def run_bench_moe(args) -> int:
    if args.top_k > args.experts:
        raise ConfigError(f"--top-k {args.top_k}: at most --experts ({args.experts})")
    run(
        args.tokens,
        d_model=args.d_model,
        experts=args.experts,
        top_k=args.top_k,
        expert_dim=args.expert_dim,
        shared_dim=args.shared_dim,
        repeats=args.repeats,
        json_path=args.json,
    )
    return 0

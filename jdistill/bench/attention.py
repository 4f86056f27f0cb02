"""`jdistill bench attention`: time the gated-attention implementations available on this backend.

For each implementation, sequence length, head dim and causal setting: median wall time over `repeats` runs
of a jitted forward (or forward + backward) with a headwise sigmoid gate, TFLOP/s, and two ratios measured in
the same run: `vs_cudnn` = time of cuDNN attention + a separate gate / time of this implementation, and
`vs_xla` = time of the XLA reference / time of this implementation (> 1 means faster).

FLOPs counted: forward 4 * batch * heads * q_len * kv_len * head_dim (two matmuls), halved when causal;
forward + backward 3.5x that (the backward's five matmuls, one of them recomputing the scores), as in
FlashAttention-2 (Dao 2023). On CPU the Pallas kernels only run in interpret mode (a simulator, not a
kernel) and cuDNN does not exist, so CPU compares the XLA paths only: the reference and
`jax.nn.dot_product_attention(implementation="xla")` + separate gate, which stands in as the baseline.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from jdistill.io import strict_json
from jdistill.kernels import gated_attention
from jdistill.kernels.cudnn import gated_attention_cudnn

BASELINE = "cudnn"  # the column every row is compared with (a stand-in on CPU, see the module docstring)


@dataclasses.dataclass(frozen=True)
class BenchCase:
    seq: int
    head_dim: int
    causal: bool
    mode: str  # "fwd" | "fwd+bwd"


def backend_impls(backend: str) -> tuple[list[str], str]:
    """The implementations to time on `backend` and a note saying why (printed with the table)."""
    if backend == "gpu":
        return ["pallas_gpu", "cudnn", "xla"], "GPU: fused Pallas kernel vs cuDNN + separate gate vs XLA"
    if backend == "tpu":
        return ["pallas_tpu", "xla_sdpa", "xla"], (
            "TPU: no cuDNN; the baseline column is jax.nn.dot_product_attention(xla) + separate gate"
        )
    return ["xla_sdpa", "xla"], (
        f"{backend.upper()}: XLA paths only — Pallas kernels run here only in interpret "
        "mode (a simulator) and cuDNN needs a GPU; the baseline column is "
        "jax.nn.dot_product_attention(xla) + separate gate"
    )


def _attention_fn(impl: str, causal: bool):
    if impl == "xla_sdpa":
        return functools.partial(gated_attention_cudnn, causal=causal, implementation="xla")
    return functools.partial(gated_attention, causal=causal, impl=impl)


def _program(impl, case: BenchCase):
    attention = _attention_fn(impl, case.causal)
    if case.mode == "fwd":
        return jax.jit(attention)

    def loss(q, k, v, gate):
        return jnp.sum(attention(q, k, v, gate).astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def flops(case: BenchCase, batch: int, heads: int) -> float:
    forward = 4.0 * batch * heads * case.seq * case.seq * case.head_dim * (0.5 if case.causal else 1.0)
    return forward * (3.5 if case.mode == "fwd+bwd" else 1.0)


def time_call(program, args, repeats: int) -> float:
    """Median seconds of `program(*args)` after one compile-and-warm-up call."""
    jax.block_until_ready(program(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(program(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _inputs(case, batch, heads, kv_heads, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, case.seq, heads, case.head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, case.seq, kv_heads, case.head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, case.seq, kv_heads, case.head_dim), dtype)
    return q, k, v, jax.random.normal(keys[3], (batch, case.seq, heads), dtype)


def run_case(case, impls, batch, heads, kv_heads, dtype, repeats):
    """Rows (dicts) for one case: each impl's time, TFLOP/s and ratios to the baseline and to XLA."""
    args = _inputs(case, batch, heads, kv_heads, dtype)
    seconds: dict[str, float | str] = {}  # an implementation's time, or why it failed
    for impl in impls:
        try:
            seconds[impl] = time_call(_program(impl, case), args, repeats)
        except Exception as error:  # one impl failing (e.g. XLA out of memory at 16k) must not stop the table
            seconds[impl] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    baseline = BASELINE if BASELINE in impls else "xla_sdpa"

    def ratio(ref: str, t: float | str) -> float | None:
        ref_seconds = seconds.get(ref)
        return ref_seconds / t if isinstance(t, float) and isinstance(ref_seconds, float) else None

    rows = []
    for impl in impls:
        t = seconds[impl]
        rows.append(
            {
                **dataclasses.asdict(case),
                "impl": impl,
                "batch": batch,
                "heads": heads,
                "kv_heads": kv_heads,
                "dtype": jnp.dtype(dtype).name,
                "seconds": t if isinstance(t, float) else None,
                "error": None if isinstance(t, float) else t,
                "tflops": flops(case, batch, heads) / t / 1e12 if isinstance(t, float) else None,
                "vs_cudnn": ratio(baseline, t),
                "vs_xla": ratio("xla", t),
            }
        )
    return rows


def format_row(row) -> str:
    def num(x, spec):
        return "-" if x is None else format(x, spec)

    text = (
        f"{row['impl']:<11} {row['seq']:>6} {row['head_dim']:>4} {row['causal']!s:<6} {row['mode']:<8}"
        f" {num(row['seconds'] and row['seconds'] * 1e3, '10.3f')} {num(row['tflops'], '8.3f')}"
        f" {num(row['vs_cudnn'], '9.2f')} {num(row['vs_xla'], '7.2f')}"
    )
    return text + (f"  {row['error']}" if row["error"] else "")


HEADER = (
    f"{'impl':<11} {'seq':>6} {'hdim':>4} {'causal':<6} {'mode':<8} {'ms':>10} {'TFLOP/s':>8}"
    f" {'vs_cudnn':>9} {'vs_xla':>7}"
)


def run(
    seqs=None,
    head_dims=(128,),
    causal=(False, True),
    modes=("fwd", "fwd+bwd"),
    batch=1,
    heads=16,
    kv_heads=16,
    impls=None,
    repeats=5,
    json_path=None,
    printer=print,
):
    """Run the benchmark grid, print the table (and the backend note), optionally write JSON lines."""
    backend = jax.default_backend()
    default_impls, note = backend_impls(backend)
    impls = list(impls or default_impls)
    if seqs is None:
        seqs = [1024, 2048, 4096, 8192, 16384] if backend in ("gpu", "tpu") else [128, 256, 512]
    dtype = jnp.bfloat16 if backend in ("gpu", "tpu") else jnp.float32
    printer(
        f"backend {backend} ({jax.devices()[0].device_kind}), {jnp.dtype(dtype).name}, batch {batch}, heads "
        f"{heads}/{kv_heads} kv, headwise gate, median of {repeats}. {note}"
    )
    printer(HEADER)
    rows = []
    for seq in seqs:
        for head_dim in head_dims:
            for is_causal in causal:
                for mode in modes:
                    case = BenchCase(seq=seq, head_dim=head_dim, causal=is_causal, mode=mode)
                    for row in run_case(case, impls, batch, heads, kv_heads, dtype, repeats):
                        rows.append(row)
                        printer(format_row(row))
    if json_path:
        with open(json_path, "w") as out:
            out.writelines(strict_json.dumps(row) + "\n" for row in rows)
    return rows

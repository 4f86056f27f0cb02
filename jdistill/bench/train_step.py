"""`jdistill bench train-step`: the KD train step against an equivalent eager PyTorch loop and a plain CE step.

One process, one machine. Contenders (each one step per call, results blocked on):
  - `kd`: jdistill's KD step (teacher forward + student forward/backward + AdamW), built by the library's own
    path: `Transformer` + `KnowledgeDistillation` (forward KL, T = 2, times T^2) + `make_train_step` +
    `make_optimizer`.
  - `ce`: the same student trained on labels alone (`Supervised`), no teacher.
  - `teacher_fwd`: the teacher's forward pass alone (jitted).
  - `torch_kd`, `torch_ce`, `torch_teacher_fwd`: the same three in eager PyTorch (`torch_reference`), with the
    jdistill weights copied in and `torch.set_num_threads(cores)`, cores being those this process may run on
    (so `taskset -c 0 jdistill bench train-step` compares one core each); with several cores the PyTorch KD
    and CE steps are also timed at one thread (`*_1thread`), since OpenMP threads that spin at barriers can
    lose badly on a machine shared with other processes; `speedup_vs_best_pytorch` uses the faster setting.
Models: a gated transformer LM (headwise SDPA-output gate, 4 heads, tanh-GELU MLP 4x, 256 byte vocab), teacher
4 layers d=256, student 2 layers d=256. Timing: after `warmup` untimed calls each, `steps` rounds that call
every contender once, in alternating order, so load from other processes hits all of them alike; a
contender's time is the median of its calls (process CPU time per call is recorded too: `*_cpu_ms`).
Ratios: speedup = jdistill KD steps/s / PyTorch KD steps/s; teacher_overhead = KD step time / CE step time;
teacher_forward_fraction = teacher forward time / CE step time; kd_over_ce_plus_teacher = KD step time /
(CE step time + teacher forward time), 1.0 when the teacher costs exactly its forward pass.
Memory: jax from the compiled step's `memory_analysis()` (temp + argument bytes); PyTorch as the increase of the
process's peak RSS (`resource.ru_maxrss`) over building the torch KD models and running their warm-up steps,
measured before JAX compiles anything (an upper bound: it includes allocator slack and lazily loaded kernels).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jdistill.configs.schema import TrainConfig
from jdistill.io import strict_json
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes import KnowledgeDistillation, Supervised
from jdistill.train.optim import make_optimizer
from jdistill.train.state import create_train_state
from jdistill.train.step import make_train_step

TEMPERATURE = 2.0
MODEL = dict(kind="lm", d_model=256, num_heads=4, mlp_dim=1024, gate="headwise", activation="gelu", vocab_size=256)


def bench_configs(seq: int, *, teacher_layers: int = 4, student_layers: int = 2, **overrides):
    """(teacher, student) `ModelConfig`s of the benchmark; `overrides` change both (tests shrink them)."""
    common = dict(MODEL, max_seq_len=seq, **overrides)
    return ModelConfig(num_layers=teacher_layers, **common), ModelConfig(num_layers=student_layers, **common)


def bench_train_config(batch: int) -> TrainConfig:
    return TrainConfig(steps=10_000, batch_size=batch, learning_rate=1e-3, warmup_steps=10)


def make_batch(batch: int, seq: int, seed: int = 0) -> dict:
    tokens = np.random.default_rng(seed).integers(0, 256, (batch, seq + 1), dtype=np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((batch, seq), np.float32)}


class JaxStep:
    """A compiled jdistill train step that carries its own (donated) state between calls."""

    def __init__(self, student_config, recipe, train_config, batch, teacher=None):
        optimizer = make_optimizer(train_config)
        graphdef, self.state = create_train_state(Transformer(student_config, rngs=nnx.Rngs(1)), optimizer)
        self.teacher_params: nnx.State | None
        t_graphdef, self.teacher_params = nnx.split(teacher) if teacher is not None else (None, None)
        step = make_train_step(graphdef, recipe, optimizer, seed=0, teacher_graphdef=t_graphdef)
        self.batch = jax.device_put(batch)
        self.compiled = step.lower(self.state, self.teacher_params, self.batch).compile()

    def __call__(self):
        self.state, metrics = self.compiled(self.state, self.teacher_params, self.batch)
        jax.block_until_ready(metrics)
        return metrics


class JaxForward:
    def __init__(self, model, inputs):
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x).logits)
        self.params, self.inputs = params, jnp.asarray(inputs)
        self.compiled = forward.lower(params, self.inputs).compile()

    def __call__(self):
        return jax.block_until_ready(self.compiled(self.params, self.inputs))


def jax_memory_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes)


def available_cores() -> int:
    """Cores this process may run on (respects `taskset`), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_torch(teacher, teacher_config, student_config, train_config, batch):
    """{name: callable} of the PyTorch contenders and the peak-RSS increase (bytes) of the KD one."""
    import torch

    from jdistill.bench import torch_reference as ref

    torch.set_num_threads(available_cores())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()
    torch_teacher = ref.TorchLM(teacher_config)
    ref.load_jdistill_weights(torch_teacher, nnx.state(teacher))
    students = []
    for _ in range(2):
        student = ref.TorchLM(student_config)
        ref.load_jdistill_weights(student, nnx.state(Transformer(student_config, rngs=nnx.Rngs(1))))
        students.append(student)
    kd = ref.TorchTrainer(students[0], train_config, teacher=torch_teacher, temperature=TEMPERATURE)
    for _ in range(2):
        kd(inputs, targets)
    rss_delta = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024  # kilobytes on Linux
    ce = ref.TorchTrainer(students[1], train_config)
    cores = available_cores()

    def one_thread(fn):  # eager PyTorch's OpenMP threads spin at barriers: on a loaded machine one may win
        def run():
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(cores)

        return run

    fns = {
        "torch_kd": lambda: kd(inputs, targets),
        "torch_ce": lambda: ce(inputs, targets),
        "torch_teacher_fwd": lambda: ref.teacher_forward(torch_teacher, inputs),
    }
    if cores > 1:
        fns.update(torch_kd_1thread=one_thread(fns["torch_kd"]), torch_ce_1thread=one_thread(fns["torch_ce"]))
    return fns, rss_delta


def time_interleaved(contenders: dict, steps: int, warmup: int, progress: bool = False) -> tuple[dict, dict]:
    """(wall seconds, process CPU seconds) per call of every contender, calling each once per round, in
    alternating order; `progress`: a bar over the calls on stderr."""
    bar = tqdm(total=len(contenders) * (warmup + steps), desc="timing", unit="call", disable=not progress)
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
            bar.update(1)
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(steps):
        for name in names if round_index % 2 == 0 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            bar.update(1)
    bar.close()
    return wall, cpu


def summarize(timings: tuple[dict, dict], results: dict) -> dict:
    times, cpu = timings
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in median.items():
        results[f"{name}_ms"] = 1e3 * seconds
        results[f"{name}_cpu_ms"] = 1e3 * statistics.median(cpu[name])
    results["jdistill_steps_per_s"] = 1.0 / median["kd"]
    results["jdistill_ce_steps_per_s"] = 1.0 / median["ce"]
    results["teacher_forward_per_s"] = 1.0 / median["teacher_fwd"]
    results["teacher_overhead"] = median["kd"] / median["ce"]
    results["teacher_forward_fraction"] = median["teacher_fwd"] / median["ce"]
    # 1.0: a KD step costs exactly a CE step plus a teacher forward; above that is the KD loss's own cost
    results["kd_over_ce_plus_teacher"] = median["kd"] / (median["ce"] + median["teacher_fwd"])
    if "torch_kd" in median:
        results["pytorch_steps_per_s"] = 1.0 / median["torch_kd"]
        results["pytorch_ce_steps_per_s"] = 1.0 / median["torch_ce"]
        results["speedup"] = median["torch_kd"] / median["kd"]
        results["speedup_ce"] = median["torch_ce"] / median["ce"]
        results["pytorch_teacher_overhead"] = median["torch_kd"] / median["torch_ce"]
        results["pytorch_teacher_forward_fraction"] = median["torch_teacher_fwd"] / median["torch_ce"]
        best = min(median["torch_kd"], median.get("torch_kd_1thread", float("inf")))
        results["pytorch_best_steps_per_s"] = 1.0 / best
        results["speedup_vs_best_pytorch"] = best / median["kd"]
    return results


def profile_kd(step: JaxStep, directory: str, steps: int = 5) -> str:
    """Trace `steps` KD steps with jax.profiler into `directory` and write the per-op table; returns the table."""
    from jdistill.bench.hlo_profile import format_table, op_table

    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(directory)
    for _ in range(steps):
        step()
    jax.profiler.stop_trace()
    hlo = step.compiled.as_text()
    (Path(directory) / "kd_step.hlo.txt").write_text(hlo)
    rows = op_table(directory, hlo, steps)
    table = format_table(rows)
    (Path(directory) / "kd_step_ops.txt").write_text(table + "\n")
    (Path(directory) / "kd_step_ops.json").write_text(strict_json.dumps(rows, indent=1))
    return table


def run_train_step(args) -> int:
    """The CLI entry point (`jdistill bench train-step`)."""
    from jdistill.extras import require

    if not args.no_torch:  # before minutes of compiling and timing the JAX side
        require("torch", "bench", "the PyTorch comparison of `jdistill bench train-step`", "pass --no-torch")
    results = run(
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        seq=args.seq,
        use_torch=not args.no_torch,
        profile=args.profile,
        progress=True,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(strict_json.dumps(results, indent=1) + "\n")
    return 0


def run(
    *,
    steps: int = 20,
    warmup: int = 3,
    batch: int = 16,
    seq: int = 128,
    use_torch: bool = True,
    profile: str | None = None,
    progress: bool = False,
    **model_overrides,
) -> dict:
    """Time every contender, print the summary (and the per-op profile), return the figures; `progress`: what is
    being built and compiled, and a bar over the timed calls, on stderr."""
    if progress:
        print("train-step: building the models and compiling the JAX steps", file=sys.stderr, flush=True)
    teacher_config, student_config = bench_configs(seq, **model_overrides)
    train_config = bench_train_config(batch)
    data = make_batch(batch, seq)
    teacher = Transformer(teacher_config, rngs=nnx.Rngs(0))
    results = {
        "batch": batch,
        "seq": seq,
        "cpu_count": available_cores(),
        "backend": jax.default_backend(),
        "temperature": TEMPERATURE,
        "steps": steps,
    }
    contenders: dict[str, Callable[[], object]] = {}
    if use_torch:
        import torch

        torch_fns, results["pytorch_peak_rss_delta_bytes"] = build_torch(
            teacher, teacher_config, student_config, train_config, data
        )
        results["torch_version"] = torch.__version__
    kd = JaxStep(student_config, KnowledgeDistillation(temperature=TEMPERATURE), train_config, data, teacher)
    ce = JaxStep(student_config, Supervised(), train_config, data)
    contenders.update(kd=kd, ce=ce, teacher_fwd=JaxForward(teacher, data["inputs"]))
    results["jax_kd_memory_bytes"] = jax_memory_bytes(kd.compiled)
    results["jax_ce_memory_bytes"] = jax_memory_bytes(ce.compiled)
    if use_torch:
        contenders.update(torch_fns)
    summarize(time_interleaved(contenders, steps, warmup, progress), results)
    print(format_results(results))
    if profile:
        print(profile_kd(kd, profile))
    return results


def format_results(r: dict) -> str:
    lines = [
        f"train step, batch {r['batch']} x {r['seq']} tokens, {r['cpu_count']} cores ({r['backend']})",
        f"  jdistill KD      {r['jdistill_steps_per_s']:7.2f} steps/s  ({r['kd_ms']:.1f} ms)",
        f"  jdistill CE      {r['jdistill_ce_steps_per_s']:7.2f} steps/s  ({r['ce_ms']:.1f} ms)",
        f"  teacher forward  {r['teacher_forward_per_s']:7.2f} /s       ({r['teacher_fwd_ms']:.1f} ms)",
    ]
    if "speedup" in r:
        lines += [
            f"  PyTorch KD       {r['pytorch_steps_per_s']:7.2f} steps/s  ({r['torch_kd_ms']:.1f} ms)",
            f"  PyTorch CE       {r['pytorch_ce_steps_per_s']:7.2f} steps/s  ({r['torch_ce_ms']:.1f} ms)",
            f"  PyTorch teacher  {1e3 / r['torch_teacher_fwd_ms']:7.2f} /s       ({r['torch_teacher_fwd_ms']:.1f} ms)",
            f"  speedup jdistill/PyTorch: KD {r['speedup']:.2f}x, CE {r['speedup_ce']:.2f}x",
        ]
        if "torch_kd_1thread_ms" in r:
            lines.append(
                f"  PyTorch, 1 thread: KD {1e3 / r['torch_kd_1thread_ms']:.2f} steps/s, CE "
                f"{1e3 / r['torch_ce_1thread_ms']:.2f} steps/s; jdistill KD vs the faster PyTorch setting "
                f"{r['speedup_vs_best_pytorch']:.2f}x"
            )
    lines.append(
        f"  teacher_overhead (KD/CE) {r['teacher_overhead']:.2f}, teacher_forward_fraction "
        f"{r['teacher_forward_fraction']:.2f}, KD / (CE + teacher forward) {r['kd_over_ce_plus_teacher']:.2f}"
    )
    if "speedup" in r:
        lines.append(
            f"  PyTorch: teacher_overhead {r['pytorch_teacher_overhead']:.2f}, teacher_forward_fraction "
            f"{r['pytorch_teacher_forward_fraction']:.2f}"
        )
    memory = f"  memory: jax KD temp+args {r['jax_kd_memory_bytes'] / 2**20:.1f} MiB (compiled memory_analysis)"
    if "pytorch_peak_rss_delta_bytes" in r:
        memory += f"; PyTorch KD peak-RSS increase {r['pytorch_peak_rss_delta_bytes'] / 2**20:.1f} MiB (ru_maxrss)"
    lines.append(memory)
    return "\n".join(lines)

"""`jdistill bench early-exit`: early-exit self-speculative greedy decoding against plain greedy decoding of the
same model, in one process (docs/early_exit.md#benchmark).

The model is a run's LM stage (`--checkpoint RUN/STAGE`, e.g. the `llm_layerskip` preset's `student_layerskip`)
or an `hf:DIR` checkpoint. Prompts: the first `--prompt-len` tokens of the run's held-out windows (one prompt per
window, `--prompts` of them), each continued by `--new-tokens` tokens at batch size 1 (LayerSkip's setting).
Contenders: plain greedy decoding (`models.generate.generate`) and self-speculative decoding
(`models.speculative.self_speculative_generate`) for every exit layer in `--exits`, draft length in
`--draft-lens` and control in fixed / Thompson. Each contender is compiled and run once first (not timed); then
`--repeats` rounds time every contender over all prompts, interleaved prompt by prompt so that load from other
processes hits all alike; a contender's time is its median round (wall time; `cpu_speedup` is the same ratio of
this process's CPU time, steadier on a loaded machine). Reported per contender: tokens/s, the
speed-up over plain greedy, `exact_match` (the fraction of prompts whose tokens equal plain greedy's), the
acceptance rate, tokens per round and mean draft length. `speedup` / `exact_match` at the top are the fastest
contender's. The quality of every exit as a predictor (perplexity of block l's output through the shared head on
the held-out windows) against the blocks it uses is written as a PNG curve beside the JSON, for this stage and,
when the run has it, its `student_scratch` stage (trained without the early-exit loss). Per-token confidence
exits (`--confidence-exits`, calibrated for `--max-quality-drop`) are measured by `bench.early_exit_confidence`
and drawn in a second panel.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.io import strict_json
from jdistill.models.generate import sample_completions
from jdistill.models.speculative import SpeculativeDecoder


def exit_perplexities(model, batches) -> list[float]:
    """Perplexity of every block's output through the model's final norm and head, over `batches` (LM windows
    with `inputs`, `targets`, `mask`): index l - 1 is block l's exit (the last is the model itself)."""

    @jax.jit
    def sums(inputs, targets, mask):
        hidden = model(inputs, return_hidden_states=True, logits=False).hidden_states[1:]
        totals = []
        for h in hidden:
            log_p = jax.nn.log_softmax(model._logits(model.final_norm(h)), axis=-1)
            nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
            totals.append(jnp.sum(jnp.where(mask, nll, 0.0)))
        return jnp.stack(totals), jnp.sum(mask)

    total: np.ndarray | float = 0.0
    count = 0.0
    for batch in batches:
        layer_sums, tokens = sums(
            jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"]), jnp.asarray(batch["mask"]) > 0
        )
        total, count = total + np.asarray(layer_sums, np.float64), count + float(tokens)
    return [math.exp(value / max(count, 1.0)) for value in np.atleast_1d(total)]


def _prompts(batches, count: int, prompt_len: int) -> list[np.ndarray]:
    prompts: list[np.ndarray] = []
    for batch in batches:
        for row, mask in zip(np.asarray(batch["inputs"]), np.asarray(batch["mask"]), strict=True):
            if mask[:prompt_len].all() and len(prompts) < count:
                prompts.append(row[:prompt_len].astype(np.int32))
    return prompts


def time_interleaved(contenders: dict, prompts, repeats: int) -> tuple[dict, dict, dict]:
    """Run every contender (`fn(prompt [1, P]) -> (tokens, info)`, compiled first, untimed) on every prompt,
    `repeats` times, interleaved prompt by prompt so that load from other processes hits all alike. Returns
    (median over rounds of each contender's wall seconds, the same for this process's CPU seconds, each
    contender's last (tokens list, info list))."""
    for fn in contenders.values():  # compile
        fn(prompts[0][None, :])
    wall = {name: [0.0] * repeats for name in contenders}
    cpu = {name: [0.0] * repeats for name in contenders}
    results: dict[str, tuple[list, list]] = {name: ([], []) for name in contenders}
    for round_ in range(repeats):
        results = {name: ([], []) for name in contenders}
        for prompt in prompts:
            for name, fn in contenders.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                tokens, info = fn(prompt[None, :])
                tokens = np.asarray(tokens)[0]
                wall[name][round_] += time.perf_counter() - started
                cpu[name][round_] += time.process_time() - started_cpu
                results[name][0].append(tokens)
                results[name][1].append(info)
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    return median, median_cpu, results


class GreedyDecoder:
    """Plain greedy decoding (`models.generate.sample_completions`) prepared like `SpeculativeDecoder`: the model
    split once, one compiled program per prompt shape, so both sides of the comparison time decoding alone."""

    def __init__(self, model, *, max_new_tokens: int):
        self.graphdef, self.params = nnx.split(model)
        self.max_new_tokens = max_new_tokens
        self._compiled: dict = {}

    def _decode(self, params, prompt):
        model = nnx.merge(self.graphdef, params)
        return sample_completions(model, prompt, max_new_tokens=self.max_new_tokens, rng=jax.random.key(0))

    def __call__(self, prompt_ids):
        prompt = np.asarray(prompt_ids).astype(np.int32)
        program = self._compiled.get(prompt.shape)
        if program is None:
            program = self._compiled[prompt.shape] = jax.jit(self._decode).lower(self.params, prompt).compile()
        return program(self.params, prompt)


def rows_loop(decoder) -> str:
    """The draft loop form a `SpeculativeDecoder` compiled ("scan" or "unrolled")."""
    return decoder.options["loop"]


def run_benchmark(
    model, prompts, *, new_tokens: int, exits, draft_lens, controls, repeats: int, loops=("auto",)
) -> dict:
    """The contenders' figures (see the module docstring) on `prompts` (each `[prompt_len]` int); `loops`: the
    `SpeculativeDecoder.draft_loop` forms timed (a name suffix `_scan` / `_unrolled` when more than one)."""

    greedy = GreedyDecoder(model, max_new_tokens=new_tokens)

    def plain(prompt):
        return greedy(prompt), None

    def speculative(exit_layer, draft_len, control, loop):
        return SpeculativeDecoder(
            model,
            exit_layer=exit_layer,
            draft_len=draft_len,
            max_new_tokens=new_tokens,
            draft_control=control,
            draft_loop=loop,
        )

    contenders = {"plain": plain}
    for exit_layer in exits:
        for draft_len in draft_lens:
            for control in controls:
                for loop in loops:
                    suffix = f"_{loop}" if len(loops) > 1 else ""
                    name = f"exit{exit_layer}_d{draft_len}_{control}{suffix}"
                    contenders[name] = speculative(exit_layer, draft_len, control, loop)
    seconds, cpu_seconds, results = time_interleaved(contenders, prompts, repeats)
    generated = len(prompts) * new_tokens
    plain_seconds = seconds["plain"]
    reference = results["plain"][0]
    rows = {}
    for name in contenders:
        if name == "plain":
            continue
        outputs, stats = results[name]
        drafted = sum(s.drafted for s in stats)
        row_rounds = sum(s.row_rounds for s in stats)
        exit_layer, draft_len, control = name.removeprefix("exit").split("_")[:3]
        rows[name] = {
            "exit_layer": int(exit_layer),
            "draft_len": int(draft_len.removeprefix("d")),
            "control": control,
            "draft_loop": rows_loop(contenders[name]),
            "tokens_per_s": generated / seconds[name],
            "speedup": plain_seconds / seconds[name],
            "cpu_speedup": cpu_seconds["plain"] / cpu_seconds[name],
            "exact_match": float(np.mean([np.array_equal(a, b) for a, b in zip(outputs, reference, strict=True)])),
            "acceptance_rate": sum(s.accepted for s in stats) / max(drafted, 1),
            "tokens_per_round": sum(s.emitted for s in stats) / max(row_rounds, 1),
            "mean_draft_len": drafted / max(row_rounds, 1),
        }
    best = max(rows, key=lambda name: rows[name]["speedup"])
    return {
        "speedup": rows[best]["speedup"],
        "exact_match": rows[best]["exact_match"],
        "best": best,
        "plain_tokens_per_s": generated / plain_seconds,
        "contenders": rows,
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "repeats": repeats,
    }


def identity_above(model, exit_layer: int):
    """A copy of `model` whose blocks after the first `exit_layer` are the identity (their attention-output and
    MLP-down projections zeroed, so they add nothing to the residual stream): the final head then reads block
    `exit_layer`'s state and every draft from that exit is accepted. Self-speculative decoding of this copy costs
    what it costs on the model, so its speed-up is the ceiling at full acceptance (`--parts cap`)."""
    model = nnx.clone(model)
    for block in list(model.blocks)[exit_layer:]:
        for layer in (block.attention.output, block.mlp.down):
            layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
            if getattr(layer, "bias", None) is not None:
                layer.bias[...] = jnp.zeros_like(layer.bias[...])
    return model


def ceiling(model, prompts, *, exits, draft_lens, new_tokens: int, repeats: int, loops) -> dict:
    """{"exit{E}": `run_benchmark` figures of `identity_above(model, E)`} for every exit E in `exits`, fixed draft
    lengths: every draft accepted, the speed-up's ceiling (`--parts cap`)."""
    return {
        f"exit{exit_layer}": run_benchmark(
            identity_above(model, exit_layer),
            prompts,
            new_tokens=new_tokens,
            exits=[exit_layer],
            draft_lens=draft_lens,
            controls=("fixed",),
            repeats=repeats,
            loops=loops,
        )
        for exit_layer in exits
    }


def plot_exit_quality(
    curves: dict[str, list[float]], path: Path, exits: dict | None = None, methods: dict | None = None
) -> None:
    """Perplexity against blocks used, one line per stage, as a PNG (written to a temporary name, then renamed);
    with `exits` (`confidence_exit_benchmark`'s figures) a panel of held-out next-token accuracy against the mean
    blocks per token of the confidence exits, the calibrated threshold marked; with `methods`
    (`early_exit_methods.methods_benchmark`) the same axes for every learned method, with the confidence exits'
    curve and the full model for reference."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(exits) + bool(methods)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for stage, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=stage)
    ax.set(xlabel="blocks used (exit layer)", ylabel="held-out perplexity", yscale="log", title="early-exit quality")
    ax.grid(alpha=0.3)
    ax.legend()
    if exits:
        ax = axes[0, 1]
        points = sorted((row["mean_blocks"], row["accuracy"]) for row in exits["curve"])
        ax.plot(*zip(*points, strict=True), label=f"exits at {exits['exit_layers']}")
        ax.scatter([exits["heldout_mean_blocks"]], [exits["heldout_accuracy"]], color="red", zorder=3,
                   label=f"threshold {exits['threshold']:.3f} ({exits['speedup']:.2f}x wall time)")  # fmt: skip
        ax.axhline(exits["heldout_accuracy_full"], color="gray", linestyle="--", label="full model")
        ax.set(xlabel="mean blocks per token", ylabel="held-out next-token accuracy", title="confidence exits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if methods:
        ax = axes[0, -1]
        for name in ("jei", "middle_skip", "acm", "self_ablation"):
            if name not in methods:
                continue
            row = methods[name]
            points = sorted((point["mean_blocks"], point["accuracy"]) for point in row["curve"])
            speed = f", {row['speedup']:.2f}x wall" if "speedup" in row else ", none within budget"
            (line,) = ax.plot(*zip(*points, strict=True), marker=".", label=f"{name}{speed}")
            if row["chosen"] is not None:
                ax.scatter([row["chosen"]["mean_blocks"]], [row["chosen"]["accuracy"]], color=line.get_color(),
                           s=60, edgecolors="black", zorder=3)  # fmt: skip
        full = methods["heldout_accuracy_full"]
        ax.axhline(full, color="gray", linestyle="--", label="full model")
        ax.axhline((1 - methods["max_quality_drop"]) * full, color="gray", linestyle=":", label="quality budget")
        ax.set(xlabel="mean blocks per token (FLOP-equivalent)", ylabel="held-out next-token accuracy",
               title="learned dynamic compute")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(image.getvalue())
    tmp.replace(path)


PARTS = ("speculative", "cap", "confidence", "methods")
DRAFT_LOOPS = ("auto", "scan", "unrolled")


def check_parts(parts, methods, loops=("auto",)) -> None:
    """One-line `ConfigError` for an unknown `--parts`, `--methods` or `--draft-loops` entry."""
    from jdistill.bench.early_exit_methods import METHODS
    from jdistill.errors import ConfigError

    flags = (("--parts", parts, PARTS), ("--methods", methods, METHODS), ("--draft-loops", loops, DRAFT_LOOPS))
    for flag, given, known in flags:
        for name in given:
            if name not in known:
                raise ConfigError(f"{flag}: unknown entry {name!r} (expected some of {', '.join(known)})")


def print_summary(figures: dict) -> None:
    """One line per contender, exit rule and method."""
    for name, row in sorted(figures.get("contenders", {}).items(), key=lambda item: -item[1]["speedup"]):
        print(
            f"{name:24s} {row['tokens_per_s']:8.1f} tok/s  {row['speedup']:5.2f}x  exact {row['exact_match']:.2f}  "
            f"accept {row['acceptance_rate']:.2f}  {row['tokens_per_round']:.2f} tok/round  "
            f"draft {row['mean_draft_len']:.2f}"
        )
    if "contenders" in figures:
        print(
            f"plain greedy {figures['plain_tokens_per_s']:.1f} tok/s; best {figures['best']}: {figures['speedup']:.2f}x"
        )
    for exit_name, cap in figures.get("all_accepted", {}).items():
        rows = ", ".join(f"{name.split('_')[1]} {row['speedup']:.2f}x" for name, row in cap["contenders"].items())
        print(f"every draft accepted ({exit_name}, blocks above it the identity): {rows}")
    for width, row in figures.get("all_accepted_by_width", {}).items():
        for exit_name, cap in row.items():
            if exit_name == "params":
                continue
            rows = ", ".join(f"{name.split('_')[1]} {c['speedup']:.2f}x" for name, c in cap["contenders"].items())
            print(
                f"every draft accepted, d_model {width} ({row['params'] / 1e6:.1f}M parameters, random, {exit_name}): "
                f"{rows} (plain {cap['plain_tokens_per_s']:.0f} tok/s)"
            )
    exits = figures.get("confidence_exits")
    if exits:
        print(
            f"confidence exits at {exits['exit_layers']}: threshold {exits['threshold']:.3f}, held-out accuracy "
            f"{exits['heldout_accuracy']:.4f} vs {exits['heldout_accuracy_full']:.4f}, "
            f"{exits['decode_mean_blocks']:.2f} blocks per token, {exits['speedup']:.2f}x plain greedy "
            f"({exits['speedup_vs_no_exit']:.2f}x without exits), exact {exits['exact_match']:.2f}"
        )
    methods = figures.get("methods", {})
    for name in ("jei", "middle_skip", "acm", "self_ablation"):
        if name not in methods:
            continue
        row = methods[name]
        chosen = row["chosen"]
        if chosen is None:
            best = max(point["accuracy"] for point in row["curve"])
            print(
                f"{name}: no point within the quality budget "
                f"(best {best:.4f} vs {methods['heldout_accuracy_full']:.4f})"
            )
        else:
            print(
                f"{name}: accuracy {chosen['accuracy']:.4f} vs {methods['heldout_accuracy_full']:.4f} at "
                f"{chosen['mean_blocks']:.2f} blocks, {row['speedup']:.2f}x plain greedy "
                f"(CPU {row['cpu_speedup']:.2f}x)"
            )


def run_early_exit(args) -> int:
    from jdistill.bench.early_exit_confidence import confidence_exit_benchmark
    from jdistill.commands.generate import load_model
    from jdistill.configs import load_config
    from jdistill.errors import ConfigError
    from jdistill.train.inputs import eval_batches

    parts, methods = list(getattr(args, "parts", PARTS)), list(getattr(args, "methods", ()))
    loops = tuple(getattr(args, "draft_loops", None) or ("auto",))
    check_parts(parts, methods, loops)
    model, _, stage = load_model(args.checkpoint)
    if model.config.kind != "lm":
        raise ConfigError(f"--checkpoint {args.checkpoint}: not a decoder language model")
    if args.checkpoint.startswith("hf:"):
        raise ConfigError("--checkpoint: a run's stage (RUN/STAGE) is needed: prompts come from its held-out split")
    stage_dir = Path(args.checkpoint)
    config = load_config(str(stage_dir.parent / "config.yaml"))
    batches = eval_batches(config.data, "lm")
    layers = model.config.num_layers
    exits = args.exits or sorted({max(1, layers // 4), max(1, layers // 2)})
    for exit_layer in exits:
        if not 1 <= exit_layer < layers:
            raise ConfigError(f"--exits: {exit_layer} is outside [1, {layers - 1}] (the model has {layers} blocks)")
    widths = list(getattr(args, "cap_widths", None) or ())
    if widths and "cap" not in parts:
        raise ConfigError("--cap-widths: measured with the ceiling only; add cap to --parts")
    if widths:
        from jdistill.bench.early_exit_width import widened

        for width in widths:
            widened(model.config, width)  # a one-line error before any compute
    prompts = _prompts(batches, args.prompts, args.prompt_len)
    if not prompts:
        raise ConfigError(f"--prompt-len {args.prompt_len}: no held-out window has that many tokens")
    figures: dict = {}
    if "speculative" in parts:
        figures = run_benchmark(
            model,
            prompts,
            new_tokens=args.new_tokens,
            exits=exits,
            draft_lens=args.draft_lens,
            controls=("fixed", "thompson"),
            repeats=args.repeats,
            loops=loops,
        )
    if "cap" in parts:  # every draft accepted: the ceiling of the speed-up (fixed draft lengths)
        measure = dict(exits=exits, draft_lens=args.draft_lens, new_tokens=args.new_tokens, repeats=args.repeats)
        figures["all_accepted"] = ceiling(model, prompts, **measure, loops=loops)
        if widths:  # the same ceiling on wider random copies of the architecture (bench.early_exit_width)
            from jdistill.bench.early_exit_width import ceiling_by_width

            figures["all_accepted_by_width"] = ceiling_by_width(model, prompts, widths=widths, **measure, loops=loops)
    curves = {stage: exit_perplexities(model, batches)}
    scratch = stage_dir.parent / "student_scratch"
    if scratch.is_dir() and stage != "student_scratch":
        curves["student_scratch"] = exit_perplexities(load_model(str(scratch))[0], batches)
    figures["exit_perplexity"] = curves
    confidence_exits = args.confidence_exits or sorted({max(1, layers * i // 4) for i in (1, 2, 3)} - {layers})
    for exit_layer in confidence_exits:
        if not 1 <= exit_layer < layers:
            raise ConfigError(
                f"--confidence-exits: {exit_layer} is outside [1, {layers - 1}] (the model has {layers} blocks)"
            )
    if "confidence" in parts:
        figures["confidence_exits"] = confidence_exit_benchmark(
            model,
            batches,
            prompts,
            exit_layers=confidence_exits,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            max_quality_drop=args.max_quality_drop,
        )
    if "methods" in parts and methods:
        from jdistill.bench.early_exit_methods import methods_benchmark, training_batches

        figures["methods"] = methods_benchmark(
            model,
            training_batches(config.data, count=max(64, args.method_steps), batch_size=4),
            list(batches)[:4],
            prompts,
            methods=methods,
            steps=args.method_steps,
            lam=args.method_lambda,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            max_quality_drop=args.max_quality_drop,
        )
    figures["checkpoint"] = args.checkpoint
    figures["cores"] = len(jax.devices("cpu")) if jax.default_backend() == "cpu" else None
    print_summary(figures)
    if args.json:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(strict_json.dumps(figures, indent=2))
        tmp.replace(path)
        plot_exit_quality(curves, path.with_suffix(".png"), figures.get("confidence_exits"), figures.get("methods"))
    return 0

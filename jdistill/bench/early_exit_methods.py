"""The learned dynamic-compute methods in `jdistill bench early-exit --methods ...` (docs/early_exit.md#benchmark):
JEI-DNN, learned middle-layer skipping, Adaptive Computation Modules and self-ablation, each fitted on the
benchmarked LM stage and measured the same way.

- **Fit** on `train` batches of the run's training split (`fit_*`; the frozen-model methods cache per-batch
  hidden states, losses or layer targets of the first 64 batches and cycle over them, self-ablation takes a fresh
  batch every step): JEI-DNN's IMs and gates, the skip router and
  ACM's learners and gates on the frozen model; self-ablation fine-tunes the model with its gates
  (`--method-steps` Adam steps each).
- **Quality vs compute** on the held-out windows (teacher-forced): next-token accuracy against the mean blocks per
  token, counted in block-equivalents of matrix-multiply FLOPs (a block is `attention_share` attention and
  1 - `attention_share` MLP; an ACM token with n of N learners in a block costs attention_share +
  (1 - attention_share) n / N of it), over a sweep of each method's inference threshold (k for self-ablation).
- **Speed-up**: the cheapest swept point whose accuracy is at least (1 - `max_quality_drop`) times the dense
  model's is decoded greedily at batch size 1 by the method's KV-cached decoder, timed against plain greedy
  decoding (`time_interleaved`). None when no swept point is within the quality budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.bench.early_exit import time_interleaved
from jdistill.models import acm as acm_lib
from jdistill.models import jei_dnn as jei
from jdistill.models import middle_skip as ms
from jdistill.models import self_ablation as sa
from jdistill.models.confidence_exit import generate_with_exits
from jdistill.models.dynamic_blocks import fit_adam
from jdistill.models.generate import generate

CACHED_BATCHES = 64  # training batches whose frozen-model activations the JEI, skip and ACM fits keep
METHODS = ("jei", "middle_skip", "acm", "self_ablation")
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def attention_share(config) -> float:
    """The attention projections' share of a block's matrix-multiply FLOPs per token (q, k, v, output vs MLP)."""
    heads, kv, head_dim, d = config.num_heads, config.resolved_kv_heads, config.resolved_head_dim, config.d_model
    attention = d * (heads + 2 * kv) * head_dim + heads * head_dim * d
    mlp = (3 if config.mlp == "glu" else 2) * d * config.mlp_dim
    return attention / (attention + mlp)


def _accuracy(logits, batch):
    valid = np.asarray(batch["mask"]) > 0
    return (np.asarray(jnp.argmax(logits, axis=-1)) == np.asarray(batch["targets"]))[valid], valid


def _ce(logits, targets):
    return jei.token_cross_entropy(logits, targets)


# --- JEI-DNN -----------------------------------------------------------------------------------------------------


def fit_jei(model, batches, exit_layers, *, steps: int, lam: float, learning_rate: float = 1e-3):
    """JEI-DNN IMs and gates on the frozen `model` (hidden states computed once per training batch)."""
    exits = tuple(exit_layers)
    costs = np.asarray([*exits, model.config.num_layers], np.float32) / model.config.num_layers
    batches = batches[:CACHED_BATCHES]
    states = jax.jit(lambda inputs: model(inputs, return_hidden_states=True, logits=False).hidden_states)
    data = [dict(hidden=states(b["inputs"]), targets=b["targets"], mask=b["mask"]) for b in batches]

    def loss(params, batch, rng):
        del rng
        logits, gates = jei.all_exit_logits(model, params, batch["hidden"], exits)
        return jei.jei_loss(_ce(logits, batch["targets"][None]), gates, costs, lam=lam, mask=batch["mask"] > 0)

    return fit_adam(
        loss, jei.init_params(model.config.d_model, len(exits)), data, steps=steps, learning_rate=learning_rate
    )


def jei_curve(model, params, batches, exit_layers) -> list[dict]:
    """(threshold, accuracy, mean blocks, ECE of the chosen exits' probabilities) over `THRESHOLDS`."""
    from jdistill.eval.metrics import add_stats, prediction_stats, summarize

    exits = tuple(exit_layers)
    blocks = np.asarray([*exits, model.config.num_layers], np.float64)

    @jax.jit
    def per_token(inputs):
        hidden = model(inputs, return_hidden_states=True, logits=False).hidden_states
        return jei.all_exit_logits(model, params, hidden, exits)

    rows: dict = {t: {"correct": [], "blocks": [], "stats": None} for t in THRESHOLDS}
    for batch in batches:
        logits, gates = per_token(jnp.asarray(batch["inputs"]))
        for threshold in THRESHOLDS:
            taken = jei.exit_taken(gates, threshold)  # [batch, seq]
            chosen = jnp.take_along_axis(logits, taken[None, ..., None], axis=0)[0]
            correct, valid = _accuracy(chosen, batch)
            row = rows[threshold]
            row["correct"].append(correct)
            row["blocks"].append(blocks[np.asarray(taken)][valid])
            stats = prediction_stats(chosen, jnp.asarray(batch["targets"]), jnp.asarray(batch["mask"]) > 0)
            row["stats"] = add_stats(row["stats"], stats)
    return [
        {
            "threshold": t,
            "accuracy": float(np.concatenate(r["correct"]).mean()),
            "mean_blocks": float(np.concatenate(r["blocks"]).mean()),
            "ece": summarize(r["stats"])["ece"],
        }
        for t, r in rows.items()
    ]


# --- middle-layer skipping ---------------------------------------------------------------------------------------


def fit_middle_skip(model, batches, *, router_layer: int, steps: int, lam: float, learning_rate: float = 3e-3):
    """The skip router on the frozen `model`: per-span losses once per training batch, then the routing objective."""
    spans = ms.central_spans(model.config.num_layers, router_layer)
    costs = ms.span_costs(model.config.num_layers, spans)

    @jax.jit
    def prepare(inputs, targets):
        hidden = model(inputs, return_hidden_states=True, logits=False).hidden_states[router_layer]
        return hidden, ms.uniform_span_losses(model, inputs, targets, spans)

    data = []
    for b in batches[:CACHED_BATCHES]:
        hidden, ce = prepare(b["inputs"], b["targets"])
        data.append(dict(hidden=hidden, ce=ce, mask=b["mask"]))

    def loss(router, batch, rng):
        del rng
        pi = jnp.moveaxis(jax.nn.softmax(ms.router_logits(router, batch["hidden"]), axis=-1), -1, 0)
        return jei.expected_loss_and_cost(pi, batch["ce"], costs, lam=lam, mask=batch["mask"] > 0)

    router = ms.init_router(model.config.d_model, len(spans))
    return fit_adam(loss, router, data, steps=steps, learning_rate=learning_rate)


def middle_skip_curve(model, router, batches, *, router_layer: int) -> list[dict]:
    spans = ms.central_spans(model.config.num_layers, router_layer)
    runs = np.asarray([model.config.num_layers - (stop - start) for start, stop in spans], np.float64)

    @jax.jit
    def run(inputs, threshold):
        hidden = model(inputs, return_hidden_states=True, logits=False).hidden_states[router_layer]
        choices = ms.choose(ms.router_logits(router, hidden), threshold)
        return ms.forward(model, inputs, choices, spans)[1], choices

    curve = []
    for threshold in THRESHOLDS:
        correct, blocks = [], []
        for batch in batches:
            logits, choices = run(jnp.asarray(batch["inputs"]), threshold)
            right, valid = _accuracy(logits, batch)
            correct.append(right)
            blocks.append(runs[np.asarray(choices)][valid])
        curve.append(_point(threshold, correct, blocks))
    return curve


def _point(threshold, correct, blocks) -> dict:
    return {
        "threshold": threshold,
        "accuracy": float(np.concatenate(correct).mean()),
        "mean_blocks": float(np.concatenate(blocks).mean()),
    }


# --- Adaptive Computation Modules --------------------------------------------------------------------------------


def fit_acm(model, batches, *, num_learners: int, steps: int, lam: float, learning_rate: float = 1e-3):
    """ACM learners (module-wise distillation from every dense MLP) and then their gates, on the frozen `model`."""
    batches = batches[:CACHED_BATCHES]
    targets = jax.jit(lambda inputs: acm_lib.dense_targets(model, inputs))
    data = [dict(zip(("x", "dense"), targets(b["inputs"]), strict=True)) for b in batches]
    first = data[0]["x"].reshape(model.config.num_layers, -1, model.config.d_model)
    acm = acm_lib.init_learners(model, first, num_learners)
    mlps = [(acm_lib._gate_fn(block.mlp), block.mlp.order) for block in model.blocks]

    def distill(params, batch, rng):
        del rng
        total = sum(
            acm_lib.distill_loss(params, layer, batch["x"][layer], batch["dense"][layer], *mlps[layer])
            for layer in range(len(mlps))
        )
        return total / len(mlps), {"distill": total / len(mlps)}

    def gate(params, batch, rng):
        del rng
        results = [
            acm_lib.gate_loss(params, layer, batch["x"][layer], batch["dense"][layer], *mlps[layer], lam=lam)
            for layer in range(len(mlps))
        ]
        return sum(r[0] for r in results) / len(mlps), results[0][1]

    initial = float(jax.jit(distill)(acm, data[0], None)[0])
    acm, metrics = fit_adam(distill, acm, data, steps=steps, learning_rate=learning_rate)
    acm, gate_metrics = fit_adam(gate, acm, data, steps=steps, learning_rate=3e-3)
    return acm, {"distill_initial": initial, "distill_final": float(metrics["distill"]), **gate_metrics}


def acm_curve(model, acm, batches, *, share: float) -> list[dict]:
    num = acm["gate"].shape[1]

    @jax.jit
    def run(inputs, threshold):
        return acm_lib.forward(model, acm, inputs, threshold)

    curve = []
    for threshold in THRESHOLDS:
        correct, blocks = [], []
        for batch in batches:
            logits, counts = run(jnp.asarray(batch["inputs"]), threshold)  # counts [L, batch, seq]
            right, valid = _accuracy(logits, batch)
            correct.append(right)
            per_token = np.sum(share + (1 - share) * np.asarray(counts) / num, axis=0)
            blocks.append(per_token[valid])
        curve.append(_point(threshold, correct, blocks))
    return curve


# --- self-ablation -----------------------------------------------------------------------------------------------


def fit_self_ablation(model, batches, *, k_heads: int, k_neurons: int, steps: int, learning_rate: float = 3e-4):
    """Fine-tune `model` and its ablation gates together with the ablation on; returns (model, gates, metrics)."""
    graphdef, params = nnx.split(model)
    gates = sa.init_gates(model, jax.random.key(0))

    def loss(both, batch, rng):
        del rng
        m = nnx.merge(graphdef, both["model"])
        logits = sa.forward(m, both["gates"], batch["inputs"], k_heads=k_heads, k_neurons=k_neurons)
        mask = batch["mask"] > 0
        ce = jnp.sum(jnp.where(mask, _ce(logits, batch["targets"]), 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        return ce, {"ce": ce}

    data = [dict(inputs=b["inputs"], targets=b["targets"], mask=b["mask"]) for b in batches]
    both, metrics = fit_adam(loss, {"model": params, "gates": gates}, data, steps=steps, learning_rate=learning_rate)
    return nnx.merge(graphdef, both["model"]), both["gates"], metrics


def self_ablation_curve(model, gates, batches, *, k_heads: int, share: float) -> list[dict]:
    """Accuracy with the ablation on at k = 1/8 .. all of the MLP neurons (the heads at `k_heads`)."""
    hidden = model.config.mlp_dim
    run = jax.jit(lambda inputs, k: sa.forward(model, gates, inputs, k_heads=k_heads, k_neurons=k))
    curve = []
    for fraction in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0):
        k = max(1, round(fraction * hidden))
        correct = [_accuracy(run(jnp.asarray(batch["inputs"]), k), batch)[0] for batch in batches]
        blocks = model.config.num_layers * (share + (1 - share) * k / hidden)
        curve.append({"k_neurons": k, "accuracy": float(np.concatenate(correct).mean()), "mean_blocks": blocks})
    return curve


def training_batches(data_config, *, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`count` shuffled batches of `batch_size` windows of the run's LM training split (numpy dicts)."""
    from jdistill import data

    dataset = data.lm_train_dataset(data.lm_windows(data_config, "train"), seed=seed, batch_size=batch_size)
    return [{key: np.asarray(value) for key, value in dataset[index].items()} for index in range(count)]


# --- the benchmark -----------------------------------------------------------------------------------------------


def cheapest_within(curve: list[dict], full_accuracy: float, max_quality_drop: float) -> dict | None:
    """The point of `curve` with the fewest mean blocks among those with accuracy >= (1 - drop) x full."""
    feasible = [row for row in curve if row["accuracy"] >= (1 - max_quality_drop) * full_accuracy - 1e-12]
    return min(feasible, key=lambda row: (row["mean_blocks"], -row["accuracy"])) if feasible else None


def _jei(model, train, heldout, *, steps, lam, new_tokens, share):
    del share
    layers = model.config.num_layers
    exits = tuple(sorted({max(1, layers * i // 4) for i in (1, 2, 3)} - {layers}))  # as the confidence exits
    params, metrics = fit_jei(model, train, exits, steps=steps, lam=lam)

    def decoder(threshold):
        rule = jei.JEIRule(threshold)
        return lambda p: generate_with_exits(
            model, p, max_new_tokens=new_tokens, threshold=0.5, exit_layers=exits, rule=rule, rule_params=params
        )[0]

    return jei_curve(model, params, heldout, exits), metrics, decoder, {"exit_layers": list(exits), "lam": lam}


def _middle_skip(model, train, heldout, *, steps, lam, new_tokens, share):
    del share
    layers = model.config.num_layers
    router_layer = max(1, layers // 8)
    router, metrics = fit_middle_skip(model, train, router_layer=router_layer, steps=steps, lam=lam)

    def decoder(threshold):
        return lambda p: ms.generate_with_skips(
            model, router, p, max_new_tokens=new_tokens, router_layer=router_layer, threshold=threshold
        )[0]

    extra = {"router_layer": router_layer, "spans": ms.central_spans(layers, router_layer), "lam": lam}
    return middle_skip_curve(model, router, heldout, router_layer=router_layer), metrics, decoder, extra


def _acm(model, train, heldout, *, steps, lam, new_tokens, share):
    acm, metrics = fit_acm(model, train, num_learners=ACM_LEARNERS, steps=steps, lam=lam * ACM_LAMBDA_SCALE)

    def decoder(threshold):
        return lambda p: acm_lib.generate_with_acm(model, acm, p, max_new_tokens=new_tokens, threshold=threshold)[0]

    extra = {"num_learners": ACM_LEARNERS, "lam": lam * ACM_LAMBDA_SCALE}
    return acm_curve(model, acm, heldout, share=share), metrics, decoder, extra


def _self_ablation(model, train, heldout, *, steps, lam, new_tokens, share):
    del lam
    cfg = model.config
    k_heads, k_train = max(1, cfg.num_heads * 3 // 4), cfg.mlp_dim // 2
    tuned, gates, metrics = fit_self_ablation(model, train, k_heads=k_heads, k_neurons=k_train, steps=steps)

    def decoder(k):
        return lambda p: sa.generate_with_ablation(
            tuned, gates, p, max_new_tokens=new_tokens, k_heads=k_heads, k_neurons=k
        )

    curve = self_ablation_curve(tuned, gates, heldout, k_heads=k_heads, share=share)
    return curve, metrics, decoder, {"k_heads": k_heads, "k_neurons_trained": k_train}


ACM_LEARNERS = 4
ACM_LAMBDA_SCALE = 0.1  # ACM's routing loss is a relative squared error per layer, not a cross-entropy
RUNNERS = {"jei": _jei, "middle_skip": _middle_skip, "acm": _acm, "self_ablation": _self_ablation}


def methods_benchmark(
    model,
    train_batches,
    eval_batches,
    prompts,
    *,
    methods=METHODS,
    steps: int,
    new_tokens: int,
    repeats: int,
    max_quality_drop: float = 0.01,
    lam: float = 0.5,
    log=print,
) -> dict:
    """Every method's fit, curve, operating point and decoding speed-up (the module docstring)."""
    share = attention_share(model.config)
    logits = jax.jit(lambda inputs: model(inputs).logits)
    full = float(np.concatenate([_accuracy(logits(jnp.asarray(b["inputs"])), b)[0] for b in eval_batches]).mean())
    out: dict = {"heldout_accuracy_full": full, "attention_share": share, "max_quality_drop": max_quality_drop}
    decoders = {}
    for method in methods:
        log(f"fitting {method} ({steps} steps)")
        curve, metrics, decoder, extra = RUNNERS[method](
            model, train_batches, eval_batches, steps=steps, lam=lam, new_tokens=new_tokens, share=share
        )
        chosen = cheapest_within(curve, full, max_quality_drop)
        out[method] = {"curve": curve, "chosen": chosen, "fit": {k: float(v) for k, v in metrics.items()}, **extra}
        if chosen is not None:
            decoders[method] = decoder(chosen.get("threshold", chosen.get("k_neurons")))
        log(f"{method}: chosen {chosen}")
    if decoders:
        contenders = {"plain": lambda p: (generate(model, p, max_new_tokens=new_tokens), None)}
        contenders.update({name: (lambda p, fn=fn: (fn(p), None)) for name, fn in decoders.items()})
        seconds, cpu_seconds, results = time_interleaved(contenders, prompts, repeats)
        for name in decoders:
            same = [np.array_equal(a, b) for a, b in zip(results[name][0], results["plain"][0], strict=True)]
            out[name].update(
                speedup=seconds["plain"] / seconds[name],
                cpu_speedup=cpu_seconds["plain"] / cpu_seconds[name],
                exact_match=float(np.mean(same)),
            )
    return out

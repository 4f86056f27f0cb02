"""Causal head gating analysis of a frozen model (Nam et al. 2025; docs/methods.md#causal-head-gating).

Per-head gates G = sigmoid(logit) `[num_layers, num_heads]` multiply each attention head's output. Only the logits
are fitted (Adam, the model frozen) to L = NLL - lam * sum(logit): first with lam = 0, then, from that
fit, with +lam (G+) and -lam (G-). Heads are labelled by `jdistill.nn.head_gates.classify_heads`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdistill.errors import RunDirError
from jdistill.eval.batch import targets_and_mask
from jdistill.losses import cross_entropy
from jdistill.nn.head_gates import HEAD_ROLES, INITIAL_LOGIT, classify_heads, head_gating_objective
from jdistill.progress import step_bar


@dataclasses.dataclass
class HeadGatingResult:
    g_zero: np.ndarray  # [num_layers, num_heads], lam = 0
    g_plus: np.ndarray  # lam > 0
    g_minus: np.ndarray  # lam < 0
    roles: np.ndarray  # [num_layers, num_heads] of HEAD_ROLES
    nll_ungated: float
    nll_gated: float


def _nll(graphdef, params, logits, batch):
    model = nnx.merge(graphdef, params)
    labels, mask = targets_and_mask(batch)
    output = model(batch["inputs"], head_gates=jax.nn.sigmoid(logits))
    return cross_entropy(output.logits, labels, mask=mask)


def fit_gate_logits(graphdef, params, batches, init_logits, *, lam: float, steps: int, learning_rate: float, bar=None):
    """Fit the gate logits for `steps` Adam steps over `batches` (cycled); the model parameters stay fixed.
    `bar`: a progress bar advanced once per step."""
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(logits, opt_state, batch):
        objective = lambda lg: head_gating_objective(_nll(graphdef, params, lg, batch), lg, lam)
        grads = jax.grad(objective)(logits)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(logits, updates), opt_state

    logits, opt_state = init_logits, optimizer.init(init_logits)
    for index in range(steps):
        logits, opt_state = step(logits, opt_state, batches[index % len(batches)])
        if bar is not None:
            bar.update(1)
    return logits


def analyze_head_gates(
    model,
    batches,
    *,
    lam: float = 0.01,
    steps: int = 200,
    learning_rate: float = 0.05,
    threshold: float = 0.5,
    progress: bool = False,
) -> HeadGatingResult:
    """Fit G (lam = 0), then G+ and G- from it, and label every head; `progress`: a bar over the 3 x `steps`."""
    config = model.config
    bar = step_bar(3 * steps, "head gates (G, G+, G-)", enabled=progress)
    graphdef, params = nnx.split(model)
    init = jnp.full((config.num_layers, config.num_heads), INITIAL_LOGIT, jnp.float32)
    fit = lambda start, lam_: fit_gate_logits(
        graphdef,
        params,
        batches,
        start,
        lam=lam_,
        steps=steps,
        learning_rate=learning_rate,
        bar=bar,
    )
    zero = fit(init, 0.0)
    plus, minus = fit(zero, lam), fit(zero, -lam)
    bar.close()
    g_plus, g_minus = np.asarray(jax.nn.sigmoid(plus)), np.asarray(jax.nn.sigmoid(minus))
    ones = jnp.full_like(init, 30.0)  # sigmoid(30) == 1 in float32: the ungated model
    mean_nll = lambda lg: float(np.mean([_nll(graphdef, params, lg, b) for b in batches]))
    return HeadGatingResult(
        np.asarray(jax.nn.sigmoid(zero)),
        g_plus,
        g_minus,
        classify_heads(g_plus, g_minus, threshold),
        mean_nll(ones),
        mean_nll(zero),
    )


def checkpointed_stages(run_dir) -> list[str]:
    """The stages of a run directory that have a checkpoint (RUN/STAGE/checkpoints/STEP): the teacher first, then
    in the order of the run's summary.json, then by name."""
    run_dir = Path(run_dir)
    found = [
        path.parent.name
        for path in run_dir.glob("*/checkpoints")
        if any(step.name.isdigit() for step in path.iterdir() if step.is_dir())
    ]
    summary = run_dir / "summary.json"
    try:
        order = list(json.loads(summary.read_text())) if summary.is_file() else []
    except (OSError, ValueError):  # a summary being written or damaged: order by name
        order = []
    rank = lambda name: (name != "teacher", order.index(name) if name in order else len(order), name)
    return sorted(found, key=rank)


def choose_stage(run_dir, asked: str | None) -> str:
    """`asked` when it has a checkpoint, else a one-line `RunDirError` listing the stages that do; with `asked`
    None, the first of `checkpointed_stages` (the teacher when it was trained)."""
    stages = checkpointed_stages(run_dir)
    listing = ", ".join(stages) if stages else "none"
    if asked is not None and asked not in stages:
        raise RunDirError(f"--stage {asked}: {run_dir} has no checkpoint of it; stages with a checkpoint: {listing}")
    if not stages:
        raise RunDirError(f"{run_dir}: no stage with a checkpoint (RUN_DIR/STAGE/checkpoints) to analyse")
    return asked or stages[0]


def format_table(result: HeadGatingResult) -> str:
    """One line per head: layer, head, G, G+, G-, role; then the role counts."""
    lines = ["layer  head      G     G+     G-  role", "-----  ----  -----  -----  -----  ------------"]
    for layer, head in np.ndindex(result.roles.shape):
        lines.append(
            f"{layer:5d}  {head:4d}  {result.g_zero[layer, head]:5.2f}  {result.g_plus[layer, head]:5.2f}"
            f"  {result.g_minus[layer, head]:5.2f}  {result.roles[layer, head]}"
        )
    counts = ", ".join(f"{role} {int((result.roles == role).sum())}" for role in HEAD_ROLES)
    lines.append(f"\n{counts}; NLL ungated {result.nll_ungated:.4f}, gated (lam=0) {result.nll_gated:.4f}")
    return "\n".join(lines)


def plot_head_gates(result: HeadGatingResult, path) -> None:
    """Heat maps of G, G+ and G- (layers x heads) with each head's role marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = {"facilitating": "F", "interfering": "I", "irrelevant": "-", "unclassified": "?"}
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.2 * result.roles.shape[1] * 3, 1 + 0.6 * result.roles.shape[0]))
    for ax, (title, gates) in zip(
        axes, (("G (lam = 0)", result.g_zero), ("G+", result.g_plus), ("G-", result.g_minus)), strict=False
    ):
        image = ax.imshow(gates, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for layer, head in np.ndindex(gates.shape):
            ax.text(head, layer, marks[str(result.roles[layer, head])], ha="center", va="center", color="white")
        ax.set(title=title, xlabel="head", ylabel="layer", xticks=range(gates.shape[1]), yticks=range(gates.shape[0]))
    fig.colorbar(image, ax=axes, fraction=0.02)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

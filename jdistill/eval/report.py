"""Human-readable results: the stage comparison table and learning-curve plots."""

from __future__ import annotations

import io

from jdistill.io import fs
from jdistill.io.jsonl import read_jsonl

# A stage's headline metrics, (summary.json key, column, format), chosen by what the stage measured:
LM_METRICS = (("perplexity", "perplexity", ".3f"), ("bits_per_byte", "bits/byte", ".4f"))
# label-free recipes (DINO, random teachers) are judged by probes on their features; their head's NLL / ECE and
# accuracy mean nothing
PROBE_METRICS = (("linear_probe_accuracy", "probe acc", ".4f"), ("knn_accuracy", "k-NN acc", ".4f"))
CLASSIFIER_METRICS = (("accuracy", "accuracy", ".4f"), ("nll", "nll", ".4f"), ("ece", "ece", ".4f"))
# diffusion teachers (recipes with `eval_stats`): the held-out denoising loss
DENOISER_METRICS = (("denoising_loss", "denoising loss", ".4f"),)


def headline_metrics(metrics: dict) -> list[tuple[str, str, str]]:
    """(key, column, format) of the metrics that judge a stage: perplexity and bits per byte for LMs, probe and
    k-NN accuracy when the recipe reports probes, the denoising loss of diffusion teachers, else accuracy, NLL and
    ECE; then the recipe's own accuracies
    (robust, aggregated, quantized, per exit ...)."""
    base: tuple[tuple[str, str, str], ...]
    if "bits_per_byte" in metrics:
        base = LM_METRICS
    elif "linear_probe_accuracy" in metrics:
        base = PROBE_METRICS
    elif "denoising_loss" in metrics:
        base = DENOISER_METRICS
    else:
        base = CLASSIFIER_METRICS
    known = {key for key, _, _ in (*LM_METRICS, *PROBE_METRICS, *CLASSIFIER_METRICS, *DENOISER_METRICS)}
    extra = [(key, key.removesuffix("_accuracy") + " acc", ".4f") for key in metrics if key.endswith("_accuracy")]
    return [*base, *(column for column in extra if column[0] not in known)]


def summary_stages(summary: dict) -> list[str]:
    """The stage entries of a summary (its dict values), in the summary's order."""
    return [key for key, value in summary.items() if isinstance(value, dict)]


def summary_table(summary: dict, stages=None) -> str:
    """A fixed-width table, one row per stage named by its summary.json key: params, each stage's headline metrics
    (`headline_metrics`; "-" where a stage does not have a column), wall time (default: every stage)."""
    stages = summary_stages(summary) if stages is None else stages
    if not stages:
        return "(no stage was evaluated)"
    metrics: dict[str, tuple[str, str]] = {}  # column -> (key, format), in order of first appearance
    for stage in stages:
        for key, column, spec in headline_metrics(summary[stage]):
            metrics.setdefault(column, (key, spec))
    columns = ["stage", "params", *metrics, "wall s"]
    rows = []
    for stage in stages:
        m = summary[stage]
        own = {key for key, _, _ in headline_metrics(m)}
        cells = [format(m[key], spec) if key in own else "-" for key, spec in metrics.values()]
        rows.append([stage, f"{m['params']:,}", *cells, f"{m['wall_seconds']:.1f}"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    fmt = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    lines = [fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)


def read_curves(metrics_path, split: str = "eval") -> dict[str, dict[str, list]]:
    """{stage: {metric: [values...], "step": [...]}} from metrics.jsonl (local or gs://; a line cut short by a
    kill is skipped, `jdistill.io.jsonl`); a null value (a non-finite number, written as null) reads as NaN."""
    curves: dict[str, dict[str, list]] = {}
    for record in read_jsonl(metrics_path):
        if record.get("split") != split or "stage" not in record:
            continue
        stage = curves.setdefault(record["stage"], {})
        for key, value in record.items():
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                stage.setdefault(key, []).append(float("nan") if value is None else value)
    return curves


def plot_learning_curves(metrics_path, out_path, stages) -> None:
    """Test accuracy and NLL (bits/byte for LMs; the denoising loss for diffusion teachers) against step for each
    stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(metrics_path)
    loss_key = "bits_per_byte" if any("bits_per_byte" in c for c in curves.values()) else "nll"
    if not any(loss_key in c for c in curves.values()):  # e.g. diffusion teachers: the held-out denoising loss
        loss_key = "denoising_loss"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for stage in stages:
        if stage not in curves:
            continue
        c = curves[stage]
        if "accuracy" in c:
            axes[0].plot(c["step"], c["accuracy"], marker=".", label=stage)
        if loss_key in c:
            axes[1].plot(c["step"], c[loss_key], marker=".", label=stage)
    axes[0].set(xlabel="step", ylabel="test accuracy", title="accuracy")
    axes[1].set(xlabel="step", ylabel=f"test {loss_key.replace('_', ' ')}", title=loss_key.replace("_", " "))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    fs.write_bytes_atomic(out_path, image.getvalue())  # a local file or a gs:// object
    plt.close(fig)

"""Human-readable results: the stage comparison table and learning-curve plots."""

from __future__ import annotations

import io

from jdistill.io import fs
from jdistill.io.jsonl import read_jsonl

STAGE_LABELS = {
    "teacher": "teacher",
    "student_scratch": "student (scratch)",
    "student_pruned": "student (pruned, untrained)",
    "student_pruned_ce": "student (pruned + CE)",
    "student_kd": "student (KD)",
}


def summary_table(summary: dict, stages=None) -> str:
    """A fixed-width table: params, accuracy, NLL, ECE (and perplexity and bits/byte for LMs), wall time per
    stage (default: every stage in the summary)."""
    stages = [k for k, v in summary.items() if isinstance(v, dict)] if stages is None else stages
    lm = "bits_per_byte" in summary[stages[0]]
    columns = ["model", "params", "accuracy", "nll", "ece"] + (["perplexity", "bits/byte"] if lm else []) + ["wall s"]
    rows = []
    for stage in stages:
        m = summary[stage]
        row = (
            [
                STAGE_LABELS.get(stage, stage),
                f"{m['params']:,}",
                f"{m['accuracy']:.4f}",
                f"{m['nll']:.4f}",
                f"{m['ece']:.4f}",
            ]
            + ([f"{m['perplexity']:.3f}", f"{m['bits_per_byte']:.4f}"] if lm else [])
            + [f"{m['wall_seconds']:.1f}"]
        )
        rows.append(row)
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
    """Test accuracy and NLL (bits/byte for LMs) against step for each stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(metrics_path)
    loss_key = "bits_per_byte" if any("bits_per_byte" in c for c in curves.values()) else "nll"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for stage in stages:
        if stage not in curves:
            continue
        c = curves[stage]
        axes[0].plot(c["step"], c["accuracy"], marker=".", label=STAGE_LABELS.get(stage, stage))
        axes[1].plot(c["step"], c[loss_key], marker=".", label=STAGE_LABELS.get(stage, stage))
    axes[0].set(xlabel="step", ylabel="test accuracy", title="accuracy")
    axes[1].set(xlabel="step", ylabel=f"test {loss_key.replace('_', ' ')}", title=loss_key.replace("_", " "))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    fs.write_bytes_atomic(out_path, image.getvalue())  # a local file or a gs:// object
    plt.close(fig)

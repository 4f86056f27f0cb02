"""A claim's PNG: grouped bars of the numbers' means with error bars (spread over seeds), axis labels with units and
a legend; written to a temporary name, then renamed (`fs.write_bytes_atomic`)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

from jdistill.io import fs
from jdistill.repro.claim import Claim


def plot_claim(
    claim: Claim, numbers: Mapping[str, Mapping], held: bool, seeds, out_path: Path, quick: bool = False
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = claim.plot
    panels = [
        (ylabel, xlabel, [bar for bar in bars if bar[0] in numbers])
        for ylabel, xlabel, bars in ((spec.ylabel, spec.xlabel, spec.bars), *spec.panels)
    ]
    panels = [panel for panel in panels if panel[2]] or panels[:1]
    widths = [max(6.0, 0.8 * len(bars) + 3) for _, _, bars in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.2), squeeze=False)
    for ax, (ylabel, xlabel, bars) in zip(axes[0], panels, strict=True):
        draw_bars(ax, bars, numbers, plt.rcParams["axes.prop_cycle"].by_key()["color"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    verdict = "holds" if held else "does not hold"
    smoke = " [--quick: a smoke test, no verdict]" if quick else ""
    title = f"{claim.name}: {verdict} (mean ± std, seeds {', '.join(map(str, seeds))}){smoke}"
    (axes[0][0].set_title if len(panels) == 1 else fig.suptitle)(title, fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    fs.write_bytes_atomic(out_path, image.getvalue())


def draw_bars(ax, bars, numbers: Mapping[str, Mapping], colours) -> None:
    """One bar per (number, tick, group) at its mean with the spread as error bar; a colour and legend per group."""
    groups = list(dict.fromkeys(group for _, _, group in bars))
    for g, group in enumerate(groups):
        index = [i for i, bar in enumerate(bars) if bar[2] == group]
        ax.bar(
            index,
            [numbers[bars[i][0]]["mean"] for i in index],
            0.7,
            yerr=[numbers[bars[i][0]]["std"] for i in index],
            capsize=3,
            color=colours[g % len(colours)],
            label=group,
        )
    ax.set_xticks(range(len(bars)), [tick for _, tick, _ in bars], fontsize=8)
    ax.legend(fontsize=8)
    ends = [numbers[n]["mean"] + sign * numbers[n]["std"] for n, _, _ in bars for sign in (-1, 1)]
    ends = [end for end in ends if math.isfinite(end)]  # a NaN number (a diverged seed) draws no bar
    if ends:
        margin = max(0.15 * (max(ends) - min(ends)), 1e-3)
        ax.set_ylim(min(ends) - margin, max(ends) + margin)
    ax.grid(axis="y", alpha=0.3)

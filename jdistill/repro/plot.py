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
    bars = [(number, tick, group) for number, tick, group in spec.bars if number in numbers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(bars) + 3), 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    verdict = "holds" if held else "does not hold"
    smoke = " [--quick: a smoke test, no verdict]" if quick else ""
    ax.set_title(f"{claim.name}: {verdict} (mean ± std, seeds {', '.join(map(str, seeds))}){smoke}", fontsize=10)
    ax.legend(fontsize=8)
    ends = [numbers[n]["mean"] + sign * numbers[n]["std"] for n, _, _ in bars for sign in (-1, 1)]
    ends = [end for end in ends if math.isfinite(end)]  # a NaN number (a diverged seed) draws no bar
    if ends:
        margin = max(0.15 * (max(ends) - min(ends)), 1e-3)
        ax.set_ylim(min(ends) - margin, max(ends) + margin)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    fs.write_bytes_atomic(out_path, image.getvalue())

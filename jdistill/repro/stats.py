"""Numbers over seeds: mean and spread, the text table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """{number: {"mean", "std", "per_seed"}}: `std` is the sample standard deviation over seeds (ddof 1; 0 for a
    single seed). Every seed must report the same numbers."""
    names = list(per_seed[0])
    for index, numbers in enumerate(per_seed):
        if set(numbers) != set(names):
            raise ValueError(f"seed #{index} reported {sorted(numbers)}, expected {sorted(names)}")
    out = {}
    for name in names:
        values = [float(numbers[name]) for numbers in per_seed]
        mean = math.fsum(values) / len(values)
        var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[name] = {"mean": mean, "std": math.sqrt(var), "per_seed": values}
    return out


def means(numbers: Mapping[str, Mapping]) -> dict[str, float]:
    return {name: entry["mean"] for name, entry in numbers.items()}


def table(numbers: Mapping[str, Mapping], seeds: Sequence[int]) -> str:
    """A fixed-width table: number, mean ± std, then each seed's value."""
    header = ["number", "mean ± std", *(f"seed {s}" for s in seeds)]
    rows = [
        [name, f"{entry['mean']:.4f} ± {entry['std']:.4f}", *(f"{v:.4f}" for v in entry["per_seed"])]
        for name, entry in numbers.items()
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])

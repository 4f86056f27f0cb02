"""Accelerator slices by name: chips, hosts, the libtpu topology to compile for, per-chip HBM and peak FLOP/s.

Names follow each vendor's own convention, which differs by generation:
  - TPU v4 and v5p count TensorCores (two per chip, run as one "megacore" device): v4-8 = 4 chips, v5p-128 = 64.
  - TPU v5e (gcloud: v5litepod-N) and v6e count chips: v5e-16 = 16 chips, v5e-256 = 256.
  - "GEN:AxB[xC]" gives the chip grid directly (v5e:4x4, v5p:4x4x4); GPUs are "h100:NODESxGPUS" (h100:4x8).

Peak dense bf16 FLOP/s per chip from the vendors' spec sheets: v4 275e12, v5e 197e12, v5p 459e12, v6e 918e12,
H100 SXM 989e12, A100 312e12. HBM per chip: v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB, H100 80 GiB.
"""

from __future__ import annotations

import dataclasses
import math
import re

from jdistill.errors import ConfigError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator generation."""

    generation: str
    platform: str  # "tpu" or "gpu"
    hbm_bytes: int
    peak_bf16_flops: float
    counts_cores: bool = False  # slice names count TensorCores (2 per chip), not chips
    chip_config: str = "default"  # libtpu chip config: v4 runs in megacore mode (one device per chip)
    gcloud_prefix: str = ""  # accelerator-type prefix for gcloud (v5e slices are "v5litepod-N")
    runtime_version: str = ""  # default TPU VM software version
    grid_dims: int = 2  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)


CHIPS = {
    "v4": Chip(
        "v4",
        "tpu",
        32 * GiB,
        275e12,
        counts_cores=True,
        chip_config="megacore",
        gcloud_prefix="v4",
        runtime_version="tpu-ubuntu2204-base",
        grid_dims=3,
    ),
    "v5e": Chip("v5e", "tpu", 16 * GiB, 197e12, gcloud_prefix="v5litepod", runtime_version="v2-alpha-tpuv5-lite"),
    "v5p": Chip(
        "v5p",
        "tpu",
        95 * GiB,
        459e12,
        counts_cores=True,
        gcloud_prefix="v5p",
        runtime_version="v2-alpha-tpuv5",
        grid_dims=3,
    ),
    "v6e": Chip("v6e", "tpu", 32 * GiB, 918e12, gcloud_prefix="v6e", runtime_version="v2-alpha-tpuv6e"),
    "h100": Chip("h100", "gpu", 80 * GiB, 989e12),
    "a100": Chip("a100", "gpu", 80 * GiB, 312e12),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p"}

# Chip grids of the standard slice shapes (chips -> grid), as Cloud TPU provisions them.
GRIDS_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
    4096: (16, 16, 16),
}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice (or `num_slices` identical slices joined over the data-centre network)."""

    name: str
    chip: Chip
    grid: tuple[int, ...]  # chips per slice along each axis (GPUs: (nodes, gpus per node))
    num_slices: int = 1

    @property
    def platform(self) -> str:
        return self.chip.platform

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def chips_per_host(self) -> int:
        if self.platform == "gpu":
            return self.grid[1]
        if self.chip.grid_dims == 2 and self.chips_per_slice <= 8:
            return self.chips_per_slice  # v5e/v6e up to 8 chips are one host
        return min(4, self.chips_per_slice)

    @property
    def hosts_per_slice(self) -> int:
        return self.chips_per_slice // self.chips_per_host

    @property
    def num_hosts(self) -> int:
        return self.hosts_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        """The libtpu topology string ("v5e:4x4", "v5p:4x4x4")."""
        return f"{self.chip.generation}:{'x'.join(map(str, self.grid))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Chips per host along each axis, as libtpu's topology description wants them."""
        if self.chips_per_host == 1:
            return (1, 1, 1)
        if self.chips_per_host == 8:
            return (2, 4, 1)
        if self.chips_per_slice >= 4:
            return (2, 2, 1)
        x, y, z = (*self.grid, 1)[:3]
        return (x, y, z)

    @property
    def accelerator_type(self) -> str:
        """gcloud's --accelerator-type of one slice (v4-8, v5litepod-16, v5p-128)."""
        per_chip = 2 if self.chip.counts_cores else 1
        return f"{self.chip.gcloud_prefix}-{self.chips_per_slice * per_chip}"

    def describe(self) -> str:
        slices = f"{self.num_slices} x " if self.num_slices > 1 else ""
        if self.platform == "gpu":
            return f"{slices}{self.grid[0]} node(s) x {self.grid[1]} {self.chip.generation.upper()}"
        return (
            f"{slices}{self.accelerator_type} ({self.topology_name}, {self.chips_per_slice} chips, "
            f"{self.hosts_per_slice} host(s))"
        )


def _grid_for(chip: Chip, chips: int, text: str) -> tuple[int, ...]:
    table = GRIDS_3D if chip.grid_dims == 3 else GRIDS_2D
    if chips not in table:
        raise ConfigError(
            f"cluster.topology: {text!r} is not a standard {chip.generation} slice "
            f"(chips: {', '.join(map(str, sorted(table)))}); give the grid, e.g. "
            f"{chip.generation}:{'x'.join(map(str, table[16]))}"
        )
    return table[chips]


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """A topology from "v5p-128", "v5litepod-16", "v5e:4x4", "h100:4x8" (or "h100-8": one node of 8)."""
    match = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)*))", text.strip().lower())
    generation = match and ALIASES.get(match.group(1), match.group(1))
    if not match or generation not in CHIPS:
        raise ConfigError(
            f"cluster.topology: cannot read {text!r}; expected e.g. v4-8, v5e-16, v5p-128, "
            f"v5e:4x4, h100:4x8 (generations: {', '.join(CHIPS)})"
        )
    chip = CHIPS[generation]
    count, grid_text = match.group(2), match.group(3)
    if chip.platform == "gpu":
        grid = tuple(int(n) for n in grid_text.split("x")) if grid_text else (1, int(count))
        if len(grid) == 1:
            grid = (1, grid[0])
        if len(grid) != 2:
            raise ConfigError(f"cluster.topology: {text!r}: GPUs are NODESxGPUS_PER_NODE, e.g. h100:4x8")
    elif grid_text:
        grid = tuple(int(n) for n in grid_text.split("x"))
        if len(grid) not in (2, 3):
            raise ConfigError(f"cluster.topology: {text!r}: a TPU grid has 2 or 3 dimensions")
    else:
        cores = int(count)
        if chip.counts_cores and cores % 2:
            raise ConfigError(
                f"cluster.topology: {text!r}: {generation} slice names count TensorCores (2 per "
                "chip), so the number must be even"
            )
        grid = _grid_for(chip, cores // 2 if chip.counts_cores else cores, text)
    if min(grid) < 1:
        raise ConfigError(f"cluster.topology: {text!r}: every grid dimension must be positive")
    return Topology(text, chip, grid, num_slices)

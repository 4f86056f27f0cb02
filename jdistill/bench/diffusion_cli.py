"""The `jdistill bench diffusion` parser (no JAX imports, so building the CLI stays fast)."""

from __future__ import annotations

import argparse

from jdistill.bench import int_list


def register(bench_sub) -> None:
    """Add `diffusion` to the `jdistill bench` subcommands."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "diffusion",
        help="digits-FD / precision / recall / class accuracy / samples/s of the diffusion teacher and "
        "students; SWD and MMD on a 2-D toy",
    )
    parser.add_argument("--json", required=True, help="write the results to this JSON file")
    parser.add_argument("--teacher", help="run dir of a digits diffusion teacher (default: train diffusion_edm)")
    parser.add_argument("--toy-teacher", help="run dir of a 2-D teacher (default: train diffusion_flow_2d)")
    parser.add_argument("--work-dir", help="where teachers and students are trained (default: beside --json)")
    parser.add_argument("--seeds", type=int, default=3, help="sampling (and student) seeds 0..N-1 (default 3)")
    parser.add_argument("--teacher-nfe", type=int_list, default=[1, 2, 4, 8, 35], help="default 1,2,4,8,35")
    parser.add_argument("--teacher-sampler", default="auto", help="auto (edm: heun, vp: ddim, flow: flow_euler)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale of the digits teacher (1: none)")
    parser.add_argument("--methods", type=lambda s: s.split(","), help="students to measure (default: all)")
    parser.add_argument("--toy", default="8gaussians", help="8gaussians, two_moons, checkerboard or none")
    parser.add_argument("--toy-seeds", type=int, help="seeds of the 2-D part (default: --seeds)")
    parser.add_argument("--toy-samples", type=int, default=2000, help="2-D points per draw (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed single evaluations (default 5)")
    parser.add_argument("--teacher-steps", type=int, help="train steps of teachers trained here (default: preset's)")
    parser.add_argument("--grids", help="folder of the PNG grids (default: JSON path without .json + _grids)")
    parser.add_argument("--data-dir", help="data directory (default: JDISTILL_DATA_DIR or the user cache)")

    def run(args) -> int:
        from jdistill.bench.diffusion import run_bench_diffusion

        return run_bench_diffusion(args)

    parser.set_defaults(func=run)

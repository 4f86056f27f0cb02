"""`jdistill sample`: draw samples from a trained diffusion teacher (docs/diffusion.md).

    jdistill sample --run-dir RUN_DIR [--stage STAGE] [--sampler heun] [--nfe 35] [--guidance-scale 1]
        [--num 100] [--labels 0,1,...] [--seed 0] [--online] --out SAMPLES.npz

The run's EMA denoiser (`load_denoiser`; `--online`: the online weights) is sampled by the jitted fixed-NFE
sampler; `SAMPLES.npz` (written to a temporary name, then renamed) holds `samples` (images in [-1, 1] or 2-D
points) and `labels` (-1 for unconditional draws). Class-conditional teachers cycle through the classes unless
`--labels` is given. The samples per second (compilation left out) go to stderr. Bad input (a missing or wrong run,
an unknown sampler, NFE < 1, guidance on an unconditional teacher) is one line and exit status 2, before any
sampling.

This module stays import-light (argparse only) so that `jdistill --help` does not load JAX.
"""

from __future__ import annotations

import argparse
import io
import sys
import time


def register(subparsers) -> None:
    """Add the `sample` subcommand to the `jdistill` parser."""
    parser = subparsers.add_parser("sample", help="draw samples from a trained diffusion teacher (diffusion_* runs)")
    parser.add_argument("--run-dir", required=True, help="the run directory of a diffusion_edm / _flow / _vp job")
    parser.add_argument("--stage", default=None, help="stage folder (default: student_<recipe>)")
    parser.add_argument("--sampler", default="heun", help="euler, heun, ddim, dpmpp_2m, flow_euler, consistency")
    parser.add_argument("--nfe", type=int, default=35, help="denoiser evaluations (heun: 35 = 18 EDM steps)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="1: conditional, 0: unconditional")
    parser.add_argument("--num", type=int, default=100, help="how many samples")
    parser.add_argument("--labels", default=None, help="comma-separated class labels, cycled (default: 0, 1, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--online", action="store_true", help="the online weights instead of the EMA")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.set_defaults(func=cmd_sample)


def requested_labels(text: str | None, num: int, num_classes: int):
    """`num` labels: `text` ("3,5") cycled, or 0 .. num_classes - 1 cycled; None for an unconditional model."""
    import numpy as np

    from jdistill.errors import ConfigError

    if not num_classes:
        if text is not None:
            raise ConfigError("--labels: the teacher is unconditional (num_classes = 0)")
        return None
    if text is None:
        return np.arange(num) % num_classes
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--labels: expected comma-separated integers, got {text!r}") from None
    bad = [value for value in values if not 0 <= value < num_classes]
    if bad:
        raise ConfigError(f"--labels: {bad[0]} is not a class of the teacher (0 .. {num_classes - 1})")
    return np.resize(np.asarray(values), num)


def cmd_sample(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.samplers import SAMPLERS, make_sampler
    from jdistill.diffusion.schedules import check_steps
    from jdistill.errors import ConfigError
    from jdistill.io import fs

    if args.sampler not in SAMPLERS:  # the cheap checks before the checkpoint is read
        raise ConfigError(f"sampler: unknown sampler {args.sampler!r}; expected one of {', '.join(SAMPLERS)}")
    check_steps(args.nfe, "nfe")
    check_steps(args.num, "--num")
    teacher = load_denoiser(args.run_dir, args.stage, ema=not args.online)
    labels = requested_labels(args.labels, args.num, teacher.model.num_classes)
    run, params = make_sampler(
        teacher.model, teacher.schedule, sampler=args.sampler, nfe=args.nfe, guidance_scale=args.guidance_scale
    )
    prior_key, sample_key = jax.random.split(jax.random.key(args.seed))
    x_T = teacher.schedule.prior(prior_key, (args.num, *teacher.model.sample_shape))
    label_array = None if labels is None else jax.numpy.asarray(labels, jax.numpy.int32)
    jax.block_until_ready(run(params, x_T, label_array, sample_key))  # compile
    started = time.perf_counter()
    samples = np.asarray(jax.block_until_ready(run(params, x_T, label_array, sample_key)))
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    np.savez(buffer, samples=samples, labels=np.full(args.num, -1) if labels is None else labels)
    fs.write_bytes_atomic(args.out, buffer.getvalue())
    print(
        f"jdistill: {args.num} samples ({args.sampler}, {args.nfe} NFE) in {seconds:.3f} s "
        f"({args.num / seconds:.1f} samples/s); wrote {args.out}",
        file=sys.stderr,
    )
    return 0

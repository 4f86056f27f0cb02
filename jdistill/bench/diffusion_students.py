"""The students `jdistill bench diffusion` measures: one entry per distillation method (docs/diffusion_metrics.md).

An entry maps the method's name (its key under "students" in the JSON) to a `Student`:

    "progressive": Student("jdistill.diffusion.methods.progressive:bench_student"),
    "reflow": Student("jdistill.diffusion.methods.rectified:bench_reflow", data=("digits", "toy2d")),

`build` names a function `(context: jdistill.bench.diffusion.BenchContext, data: str, seed: int) -> Generator`
(imported only when the benchmark runs): it trains or loads the student distilled from `context.teacher(data)`
with `seed` (caching its run under `context.student_dir(name, data, seed)`), and returns a
`jdistill.bench.diffusion.Generator` (`denoiser_generator(model, schedule, sampler=...)` for a denoiser with one of
the library's samplers). `data`: "digits" and / or "toy2d"; `nfes`: the step counts to measure.
This module imports nothing heavy, so adding an entry is one line.
"""

from __future__ import annotations

import dataclasses

STUDENT_NFES = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Student:
    build: str  # "package.module:function"
    data: tuple[str, ...] = ("digits",)
    nfes: tuple[int, ...] = STUDENT_NFES


_TRAJECTORY = "jdistill.diffusion.methods.bench_students"  # the trajectory family (docs/diffusion_methods.md)

STUDENTS: dict[str, Student] = {
    # one line per method, e.g. "progressive": Student("jdistill.diffusion.methods.progressive:bench_student"),
    "progressive": Student(f"{_TRAJECTORY}:progressive", data=("digits", "toy2d")),
    "consistency": Student(f"{_TRAJECTORY}:consistency", data=("digits", "toy2d")),
    "consistency_training": Student(f"{_TRAJECTORY}:consistency_training"),
    "tcd": Student(f"{_TRAJECTORY}:tcd", data=("digits", "toy2d")),
    "tdd": Student(f"{_TRAJECTORY}:tdd"),
    "hyper_sd": Student(f"{_TRAJECTORY}:hyper_sd", data=("digits", "toy2d")),
    "hyper_sd_4step": Student(f"{_TRAJECTORY}:hyper_sd_4step", nfes=(4,)),
    "hyper_sd_feedback": Student(f"{_TRAJECTORY}:hyper_sd_feedback"),
    "image_free_cm": Student(f"{_TRAJECTORY}:image_free_cm"),
    "reflow": Student(f"{_TRAJECTORY}:reflow", data=("digits", "toy2d")),
    "traflow": Student(f"{_TRAJECTORY}:traflow"),
    "shortcut": Student(f"{_TRAJECTORY}:shortcut"),
    "sfd": Student(f"{_TRAJECTORY}:sfd", nfes=(4,)),
    "sfd_v": Student(f"{_TRAJECTORY}:sfd_v", nfes=(2, 4)),
    "dode": Student(f"{_TRAJECTORY}:dode", nfes=(4,)),
    "guidance": Student(f"{_TRAJECTORY}:guidance"),
    **{
        name: Student(f"jdistill.bench.diffusion_generators:{name}", nfes=(1, 2))
        for name in ("dmd", "dmd2", "sid", "dmd_rl", "dmd2_gan", "ladd", "emd", "disback")
    },
    "phased_dmd": Student("jdistill.bench.diffusion_generators:phased_dmd", nfes=(1, 2)),
    "causvid": Student("jdistill.bench.diffusion_generators:causvid", nfes=(1, 2)),
    "flash_dmd": Student("jdistill.bench.diffusion_generators:flash_dmd", nfes=(1, 2, 4)),
    "inference_time": Student("jdistill.bench.diffusion_generators:inference_time", nfes=(2,)),
    "multi_student": Student("jdistill.bench.diffusion_generators:multi_student", nfes=(1,)),
}

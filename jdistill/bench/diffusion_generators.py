"""The one-step generators `jdistill bench diffusion` measures (docs/diffusion_generators.md): DMD, DMD2, SiD and
DMD meets RL, each trained from the benchmark's digits teacher with its preset (or loaded when its run is there)
and sampled with its recipe's `student_sampler` (`jdistill.diffusion.methods.bench_students.recipe_generator`).

Registered in `jdistill.bench.diffusion_students.STUDENTS` by name; this module imports nothing heavy at import time.
"""

from __future__ import annotations

# name -> (preset, recipe options[, other config overrides]), as `jdistill.diffusion.methods.bench_students.METHODS`
GENERATORS: dict[str, tuple] = {
    "dmd": ("diffusion_dmd", {"variant": "dmd"}),
    "dmd2": ("diffusion_dmd2", {"variant": "dmd2"}),
    "sid": ("diffusion_sid", {}),
    "dmd_rl": ("diffusion_dmd_rl", {"variant": "dmd"}),
}


def build(name: str):
    """The benchmark builder `(context, data, seed) -> Generator` of generator method `name`."""

    def builder(context, data: str, seed: int):
        from jdistill.diffusion.methods import bench_students

        bench_students.METHODS.setdefault(name, GENERATORS[name])  # its train-or-load reads the method's preset there
        return bench_students.build(name)(context, data, seed)

    return builder


dmd = build("dmd")
dmd2 = build("dmd2")
sid = build("sid")
dmd_rl = build("dmd_rl")

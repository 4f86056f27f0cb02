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
    "dmd2_gan": ("diffusion_dmd2_gan", {"variant": "dmd2"}),
    "flash_dmd": ("diffusion_flash_dmd", {"variant": "flash"}),
    "ladd": ("diffusion_ladd", {}),
    "emd": ("diffusion_emd", {}),
    "disback": ("diffusion_disback", {}),
    "phased_dmd": ("diffusion_phased_dmd", {}),
    # multi-student distillation: SiD students, each on its half of the classes for half of SiD's steps (the two
    # together cost one SiD training)
    **{
        f"multi_student{k}": ("diffusion_sid", {"num_students": 2, "student_index": k}, ["student.train.steps=1200"])
        for k in range(2)
    },
}


# inference-time distillation: the SiD generator, its sample corrected once by the teacher at this sigma and weight
# (chosen on a 200-step SiD generator, seed 0: FD 2.12 -> 1.43 at sigma 0.2, weight 1; 2.40 at 0.5, 0.5; 3.76 at 1.0)
CORRECTION = {"correction_time": 0.2, "correction_weight": 1.0}


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
dmd2_gan = build("dmd2_gan")
flash_dmd = build("flash_dmd")
ladd = build("ladd")
emd = build("emd")
disback = build("disback")
phased_dmd = build("phased_dmd")


def inference_time(context, data: str, seed: int):
    """The SiD generator of the benchmark (trained or loaded as `sid`) sampled with the teacher's correction after its
    step: NFE 2 = one generator and one teacher evaluation (`dmd.teacher_corrected`), no retraining."""
    import dataclasses

    from jdistill.diffusion.methods import bench_students
    from jdistill.recipes.registry import build_recipe

    bench_students.METHODS.setdefault("sid", GENERATORS["sid"])
    student = bench_students._train_or_load(context, "sid", data, seed)
    recipe = dataclasses.replace(build_recipe(student.config.distill), **CORRECTION)
    return bench_students.recipe_generator(recipe, student.model)


def multi_student(context, data: str, seed: int):
    """Two SiD generators, each distilled on half of the classes (`multi_student{k}`); a sample is drawn by the one
    that owns its label (`jdistill.diffusion.methods.multi_student.select`): NFE 1 per sample."""
    import jax.numpy as jnp

    from jdistill.bench.diffusion import Generator
    from jdistill.diffusion.methods import bench_students
    from jdistill.diffusion.methods.multi_student import select
    from jdistill.recipes.registry import build_recipe

    parts = []
    for k in range(2):
        name = f"multi_student{k}"
        bench_students.METHODS.setdefault(name, GENERATORS[name])
        student = bench_students._train_or_load(context, name, data, seed)
        parts.append(bench_students.recipe_generator(build_recipe(student.config.distill), student.model))
    num_classes = context.teacher(data).model.num_classes

    def draw(nfe: int):
        draws = [part.draw(nfe) for part in parts]
        return lambda key, labels: select(jnp.stack([d(key, labels) for d in draws]), labels, num_classes)

    return Generator(draw, parts[0].forward, conditional=True)


def causvid(context, data: str, seed: int):
    """CausVid on digit videos: the bidirectional video teacher (preset `diffusion_video_edm`) and the causal student
    (preset `diffusion_causvid`), each trained under the benchmark's work directory with `seed` (or loaded). A sample
    of label y is the last frame of a video counting up to y (the frame drawn with the most cached context); NFE =
    the student's steps per frame (plus one cache pass per earlier frame)."""
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdistill.bench.diffusion import Generator
    from jdistill.configs import load_config
    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.samplers import draw_from_prior
    from jdistill.recipes.registry import build_recipe
    from jdistill.train import run_teacher_student

    def train_or_load(name: str, preset: str, overrides: list[str]):
        run_dir = Path(context.student_dir(name, data, seed))
        if not (run_dir / "summary.json").is_file():
            config = load_config(preset, [f"seed={seed}", *overrides])
            run_teacher_student(config, run_dir, resume=(run_dir / "config.yaml").is_file())
        return run_dir

    teacher_dir = train_or_load("video_teacher", "diffusion_video_edm", [])
    student = load_denoiser(
        train_or_load("causvid", "diffusion_causvid", [f"distill.options.teacher_run={teacher_dir}"])
    )
    recipe, model = build_recipe(student.config.distill), student.model
    frames = model.frames

    def draw(nfe: int):
        run, params = recipe.student_sampler(model, nfe)
        videos = draw_from_prior(run, recipe.schedule, params, model.sample_shape, conditional=True)
        return lambda key, labels: videos(key, (labels - (frames - 1)) % 10)[:, -1]

    graphdef, params = nnx.split(model)

    @jax.jit
    def one_pass(params, key, labels):  # one evaluation of the whole video: the throughput reference
        x = recipe.schedule.prior(key, (labels.shape[0], *model.sample_shape))
        return nnx.merge(graphdef, params)(x, jnp.full(labels.shape, recipe.schedule.t_max), labels)

    return Generator(draw, lambda nfe: lambda key, labels: one_pass(params, key, labels), conditional=True)

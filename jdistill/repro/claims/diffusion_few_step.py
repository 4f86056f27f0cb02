"""`diffusion-few-step`: distilled one- and few-step students against their diffusion teacher at 1 / 4 / 35 steps
(progressive distillation, Salimans & Ho 2022; consistency distillation, Song et al. 2023; TCD, Zheng et al. 2024;
Hyper-SD, Ren et al. 2024): at 1 and 4 steps a student beats the teacher sampled with as few steps, and the best
4-step student comes within 1.5x of the teacher's 35-step quality.

One seed: the digits teacher (the `diffusion_edm` preset, 3000 steps, EDM Heun sampler; or the trained run given as
`teacher=RUN_DIR`, as `jdistill bench diffusion --teacher`), and each student of `methods` (default progressive,
consistency, tcd, hyper_sd) trained from it with the seed, by its preset and options of
`jdistill.diffusion.methods.bench_students.METHODS` (the students `jdistill bench diffusion` measures). With
`work=DIR` (a `bench diffusion --work-dir`), a student already finished there (`DIR/students/<method>/digits/seed<s>`
with its summary.json) is measured as it is instead of trained again. Scoring is `jdistill bench diffusion`'s
(`measure_digits`): one conditional sample per test image (360, the test split's labels) from `jax.random.key(seed)`,
digits-FD in the features of the cached digits-FD classifier against the train split; the teacher at 1, 4 and 35
steps, each student at 1 and 4 steps (its own sampler).
2-D: the flow teacher of the `diffusion_flow_2d` preset on 8 Gaussians (or `toy_teacher=RUN_DIR`; Euler sampler) and
the students of `methods` that the bench trains on 2-D data (progressive, consistency, tcd, hyper_sd, reflow; the
student copies the teacher's MLP), scored as the bench does: sliced Wasserstein distance of `TOY_SAMPLES` points to
as many fresh points of the true distribution; the teacher at 1 / 4 / 35 steps, the students at 1 / 4.
Held: at 1 step and at 4 steps the best student's FD is below the teacher's FD at the same steps, the best 4-step
student's FD is at most 1.5x the teacher's 35-step FD (issue 15's goal), and on the 2-D data the best student's SWD is
below the teacher's at 1 and at 4 steps (means over seeds). A student whose training stops on a non-finite loss is
reported with NaN numbers (a line on stderr) and left out of the best student.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from jdistill.repro.claim import Claim, Context, Plot

TEACHER_NFES, STUDENT_NFES = (1, 4, 35), (1, 4)
METHODS = ("progressive", "consistency", "tcd", "hyper_sd")
TOY, TOY_SAMPLES, TOY_METHODS = "8gaussians", 2000, ("progressive", "consistency", "tcd", "hyper_sd", "reflow")
GOAL_RATIO = 1.5
REPEATS = 3
QUICK_TOY_SAMPLES = 200
QUICK = (
    "student.model.num_layers=1",
    "student.model.d_model=16",
    "student.model.num_heads=2",
    "student.model.mlp_dim=32",
    "student.train.steps=10",
    "student.train.warmup_steps=1",
    "student.train.eval_every=10",
    "student.train.checkpoint_every=10",
    "student.train.log_every=10",
    "student.train.batch_size=16",
)


def method_list(text: str) -> list[str]:
    from jdistill.diffusion.methods.bench_students import METHODS as KNOWN
    from jdistill.errors import ConfigError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN]
    if unknown or not names:
        raise ConfigError(f"methods={text}: expected comma-separated students of {', '.join(KNOWN)}")
    return names


def student_run(context: Context, name: str, teacher_dir: Path, data: str = "digits", teacher_model=None) -> Path:
    """The run directory of method `name`'s student of `data` ("digits" / "toy2d") for this seed: finished in `work`
    (reused), else trained here with its bench preset and options (2-D: on `TOY`, copying `teacher_model`, the
    teacher's model config, as the bench does)."""
    import dataclasses

    from jdistill.diffusion.methods.bench_students import METHODS as KNOWN

    work = str(context.params.get("work", ""))
    cached = Path(work) / "students" / name / data / f"seed{context.seed}"
    if work and (cached / "summary.json").is_file():
        return cached
    preset, options, *extra = KNOWN[name]
    settings = [f"distill.options.teacher_run={teacher_dir}"]
    settings += [f"distill.options.{key}={value}" for key, value in options.items()] + list(extra[0] if extra else ())
    if data == "toy2d":
        settings += [f"distill.options.data={TOY}", "distill.options.class_conditional=false"]
    config = context.config(preset, *settings)
    if teacher_model is not None:
        config = dataclasses.replace(config, student=dataclasses.replace(config.student, model=teacher_model))
    run_name = name if data == "digits" else f"{name}_{data}"
    context.job(config, run_name)
    return context.run_dir / run_name


def diverged_as_none(context: Context, name: str, data: str, train):
    """`train()`, or None when the student's training stopped on a non-finite loss (its numbers are then NaN, drawn
    as no bar and left out of the best student; a line on stderr says so)."""
    from jdistill.errors import NonFiniteError

    try:
        return train()
    except NonFiniteError as error:
        print(f"jdistill: {name} ({data}, seed {context.seed}) diverged, its numbers are NaN: {error}", file=sys.stderr)
        return None


def toy_numbers(context: Context, methods) -> dict[str, float]:
    """{swd_<who>_<nfe>}: the 2-D teacher at `TEACHER_NFES` and the 2-D students of `methods` at `STUDENT_NFES`."""
    from jdistill.bench.diffusion import DEFAULT_SAMPLERS, denoiser_generator, load_teacher, measure_toy
    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.methods.bench_students import recipe_generator
    from jdistill.recipes.registry import build_recipe

    given = str(context.params["toy_teacher"])
    teacher_dir = Path(given or context.run_dir / "teacher_toy2d")
    if not given:
        context.job(context.config("diffusion_flow_2d", f"distill.options.data={TOY}"), "teacher_toy2d")
    teacher = load_teacher(teacher_dir, "toy2d")
    samples = QUICK_TOY_SAMPLES if context.quick else TOY_SAMPLES
    seeds = [context.seed]
    generator = denoiser_generator(teacher.model, teacher.schedule, sampler=DEFAULT_SAMPLERS[teacher.schedule.name])
    scores = measure_toy(generator, TEACHER_NFES, TOY, samples, seeds, REPEATS)[0]
    numbers = {f"swd_teacher_{nfe}": scores[str(nfe)]["swd"] for nfe in TEACHER_NFES}
    for name in [m for m in methods if m in TOY_METHODS]:
        train = lambda n=name: student_run(context, n, teacher_dir, "toy2d", teacher.config.student.model)
        run = diverged_as_none(context, name, "toy2d", train)
        if run is None:
            numbers.update({f"swd_{name}_{nfe}": math.nan for nfe in STUDENT_NFES})
            continue
        student = load_denoiser(run)
        generator = recipe_generator(build_recipe(student.config.distill), student.model)
        scores = measure_toy(generator, STUDENT_NFES, TOY, samples, seeds, REPEATS)[0]
        numbers.update({f"swd_{name}_{nfe}": scores[str(nfe)]["swd"] for nfe in STUDENT_NFES})
    return numbers


def measure(context: Context) -> dict[str, float]:
    from jdistill.bench.diffusion import (
        DEFAULT_SAMPLERS,
        DigitsReference,
        denoiser_generator,
        load_teacher,
        measure_digits,
    )
    from jdistill.diffusion.data import digits
    from jdistill.diffusion.feature_classifier import load_or_train
    from jdistill.diffusion.load import load_denoiser
    from jdistill.diffusion.methods.bench_students import recipe_generator
    from jdistill.recipes.registry import build_recipe

    methods = method_list(str(context.params["methods"]))
    teacher_dir = Path(str(context.params["teacher"]) or context.run_dir / "teacher")
    if not str(context.params["teacher"]):
        context.job(context.config("diffusion_edm"), "teacher")
    teacher = load_teacher(teacher_dir, "digits")
    classifier = load_or_train(verbose=False)
    train_images, _ = digits("train")
    test_images, test_labels = digits("test")
    reference = DigitsReference(classifier, classifier.features(train_images), test_images, test_labels)
    sampler = DEFAULT_SAMPLERS[teacher.schedule.name]
    generator = denoiser_generator(teacher.model, teacher.schedule, sampler=sampler)
    seeds = [context.seed]
    numbers = {}
    scores = measure_digits(generator, TEACHER_NFES, reference, seeds, REPEATS)[0]
    numbers.update({f"fd_teacher_{nfe}": scores[str(nfe)]["fd"] for nfe in TEACHER_NFES})
    for name in methods:
        run = diverged_as_none(context, name, "digits", lambda n=name: student_run(context, n, teacher_dir))
        if run is None:
            numbers.update({f"fd_{name}_{nfe}": math.nan for nfe in STUDENT_NFES})
            continue
        student = load_denoiser(run)
        generator = recipe_generator(build_recipe(student.config.distill), student.model)
        scores = measure_digits(generator, STUDENT_NFES, reference, seeds, REPEATS)[0]
        numbers.update({f"fd_{name}_{nfe}": scores[str(nfe)]["fd"] for nfe in STUDENT_NFES})
    return {**numbers, **toy_numbers(context, methods)}


def best_student(means, metric: str, nfe: int) -> float:
    """The lowest `metric` ("fd" / "swd") of any student at `nfe` steps, diverged (NaN) ones left out (inf when
    none was measured)."""
    student = lambda key: key.startswith(f"{metric}_") and key.endswith(f"_{nfe}") and "teacher" not in key
    values = [value for key, value in means.items() if student(key) and math.isfinite(value)]
    return min(values, default=float("inf"))


def held(means) -> bool:
    beats = all(
        best_student(means, metric, nfe) < means[f"{metric}_teacher_{nfe}"]
        for metric in ("fd", "swd")
        for nfe in STUDENT_NFES
    )
    return beats and best_student(means, "fd", 4) <= GOAL_RATIO * means["fd_teacher_35"]


CLAIM = Claim(
    name="diffusion-few-step",
    statement="distilled one- and few-step students beat their diffusion teacher at 1 and 4 steps and the best "
    "4-step student comes within 1.5x of the teacher at 35 steps",
    paper="Salimans & Ho 2022 (progressive), Song et al. 2023 (consistency), Zheng et al. 2024 (TCD), Ren et al. "
    "2024 (Hyper-SD)",
    setting="8x8 digits, diffusion_edm teacher (3000 steps, Heun) and the bench students progressive, consistency, "
    "tcd, hyper_sd; digits-FD of 360 conditional samples (one per test image) in the digits-FD classifier's features; "
    "2-D: diffusion_flow_2d teacher on 8 Gaussians and the same students (+ reflow), SWD of 2000 points",
    rule="best student FD < teacher FD at 1 step and at 4 steps, best 4-step student FD <= 1.5 x teacher 35-step FD, "
    "and best 2-D student SWD < teacher SWD at 1 and at 4 steps (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="digits-FD (classifier feature units², lower is better)",
        xlabel="sampling steps (NFE)",
        bars=(
            *((f"fd_teacher_{nfe}", f"teacher {nfe}", "teacher") for nfe in TEACHER_NFES),
            *(
                (f"fd_{name}_{nfe}", f"{name} {nfe}", f"{nfe}-step students")
                for nfe in STUDENT_NFES
                for name in TOY_METHODS  # the default methods and reflow; a bar per student measured
            ),
        ),
        panels=(
            (
                "2-D SWD to the true points (lower is better)",
                "sampling steps (NFE)",
                (
                    *((f"swd_teacher_{nfe}", f"teacher {nfe}", "teacher") for nfe in TEACHER_NFES),
                    *(
                        (f"swd_{name}_{nfe}", f"{name} {nfe}", f"{nfe}-step students")
                        for nfe in STUDENT_NFES
                        for name in TOY_METHODS
                    ),
                ),
            ),
        ),
    ),
    quick=QUICK,
    presets=("diffusion_edm", "diffusion_cd", "diffusion_progressive", "diffusion_reflow", "diffusion_flow_2d"),
    params={"teacher": "", "toy_teacher": "", "work": "", "methods": ",".join(METHODS)},
    command="(trained teachers and bench students: teacher=RUN_DIR toy_teacher=RUN_DIR work=BENCH_WORK_DIR)",
)

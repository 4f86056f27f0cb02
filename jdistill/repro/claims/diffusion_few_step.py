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
Held: at 1 step and at 4 steps the best student's FD is below the teacher's FD at the same steps, and the best 4-step
student's FD is at most 1.5x the teacher's 35-step FD (issue 15's goal; means over seeds).
"""

from __future__ import annotations

from pathlib import Path

from jdistill.repro.claim import Claim, Context, Plot

TEACHER_NFES, STUDENT_NFES = (1, 4, 35), (1, 4)
METHODS = ("progressive", "consistency", "tcd", "hyper_sd")
GOAL_RATIO = 1.5
REPEATS = 3
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


def student_run(context: Context, name: str, teacher_dir: Path) -> Path:
    """The run directory of method `name`'s student for this seed: finished in `work` (reused), else trained here
    with its bench preset and options."""
    from jdistill.diffusion.methods.bench_students import METHODS as KNOWN

    work = str(context.params.get("work", ""))
    cached = Path(work) / "students" / name / "digits" / f"seed{context.seed}"
    if work and (cached / "summary.json").is_file():
        return cached
    preset, options, *extra = KNOWN[name]
    settings = [f"distill.options.teacher_run={teacher_dir}"]
    settings += [f"distill.options.{key}={value}" for key, value in options.items()] + list(extra[0] if extra else ())
    context.job(context.config(preset, *settings), name)
    return context.run_dir / name


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
        student = load_denoiser(student_run(context, name, teacher_dir))
        generator = recipe_generator(build_recipe(student.config.distill), student.model)
        scores = measure_digits(generator, STUDENT_NFES, reference, seeds, REPEATS)[0]
        numbers.update({f"fd_{name}_{nfe}": scores[str(nfe)]["fd"] for nfe in STUDENT_NFES})
    return numbers


def held(means) -> bool:
    best = {
        nfe: min(value for key, value in means.items() if key.endswith(f"_{nfe}") and not key.startswith("fd_teacher"))
        for nfe in STUDENT_NFES
    }
    beats = all(best[nfe] < means[f"fd_teacher_{nfe}"] for nfe in STUDENT_NFES)
    return beats and best[4] <= GOAL_RATIO * means["fd_teacher_35"]


CLAIM = Claim(
    name="diffusion-few-step",
    statement="distilled one- and few-step students beat their diffusion teacher at 1 and 4 steps and the best "
    "4-step student comes within 1.5x of the teacher at 35 steps",
    paper="Salimans & Ho 2022 (progressive), Song et al. 2023 (consistency), Zheng et al. 2024 (TCD), Ren et al. "
    "2024 (Hyper-SD)",
    setting="8x8 digits, diffusion_edm teacher (3000 steps, Heun) and the bench students progressive, consistency, "
    "tcd, hyper_sd; digits-FD of 360 conditional samples (one per test image) in the digits-FD classifier's features",
    rule="best student FD < teacher FD at 1 step and at 4 steps, and best 4-step student FD <= 1.5 x teacher 35-step "
    "FD (means over seeds)",
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
                for name in METHODS
            ),
        ),
    ),
    quick=QUICK,
    presets=("diffusion_edm", "diffusion_cd", "diffusion_progressive"),
    params={"teacher": "", "work": "", "methods": ",".join(METHODS)},
    command="(a trained teacher and bench students: teacher=RUN_DIR work=BENCH_WORK_DIR)",
)

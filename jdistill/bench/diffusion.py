"""`jdistill bench diffusion --json PATH`: sample quality and speed of the diffusion teacher and its distilled students.

Digits: the teacher at NFE 1, 2, 4, 8, 35 (`--teacher-nfe`) and each student of
`jdistill.bench.diffusion_students.STUDENTS` at its NFEs (1, 2, 4) draw one conditional sample per test-split image,
with that image's label (360 samples, the test split's class mix), from the noise of `jax.random.key(seed)` for each
seed (`--seeds`, 3 by default: the headline numbers are means over seeds). Each set is scored by
`jdistill.diffusion.metrics` in the features of the digits-FD classifier (`jdistill.diffusion.feature_classifier`):
digits-FD and k-NN precision / recall (k = 3) against the train split (1437 images), and the class accuracy of the
samples by that classifier. The floor `real_fd` is the same FD for the test split itself (real images vs the train
split, equal sample size). 2-D toy (`--toy`, default 8gaussians): the flow teacher and the students that list
"toy2d" draw `--toy-samples` points, scored by sliced Wasserstein distance and unbiased MMD^2 against as many fresh
points of the true distribution; the floor is the same between two fresh draws.

Speed: each sampler is one jitted function of (key, labels) with a fixed NFE. After a warm-up call, it and one jitted
denoiser evaluation on the same batch (with guidance: the conditional and the null pass, as the samplers count one
NFE) are timed to completion alternately, `--repeats` times each; samples/s = n / median seconds. The goal is
`samples/s >= 0.8 x single-evaluation samples/s / NFE` (no per-step Python overhead).

Teachers come from run directories (`--teacher`, `--toy-teacher`: `jdistill.diffusion.load.load_denoiser`) or are
trained here from the presets `diffusion_edm` / `diffusion_flow_2d` into `--work-dir` (reused when already there).
JSON layout (docs/diffusion_metrics.md#the-benchmark): {"teacher": {"<nfe>": {"fd", "precision", "recall",
"class_accuracy", "samples_per_s"}}, "students": {"<method>": {"<nfe>": {...}}}, "real_fd": <floor>, "toy2d": {...}}
plus "per_seed", "throughput", "goals" (the students' goals, `jdistill.bench.diffusion_goals`), "real",
"classifier" and "settings".
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdistill.bench.diffusion_goals import format_goals, goals
from jdistill.bench.diffusion_students import STUDENTS, Student
from jdistill.diffusion import metrics
from jdistill.errors import ConfigError, RunDirError
from jdistill.io import fs, strict_json

TEACHER_NFES = (1, 2, 4, 8, 35)
DIGITS_PRESET = "diffusion_edm"
TOY_PRESET = "diffusion_flow_2d"
DEFAULT_SAMPLERS = {"edm": "heun", "vp": "ddim", "flow": "flow_euler"}
THROUGHPUT_GOAL = 0.8
DIGITS_METRICS = ("fd", "precision", "recall", "class_accuracy", "samples_per_s")
TOY_METRICS = ("swd", "mmd", "samples_per_s")
TOY_SEED_OFFSET = 1000  # the true points a toy draw is compared with come from key(seed + offset)
GRID_PER_CLASS = 10

Draw = Callable[[Any, Any], Any]  # (key, labels int32 [n]) -> samples [n, ...] (jitted)


@dataclasses.dataclass(frozen=True)
class Generator:
    """What the benchmark measures of a teacher or student.

    `draw(nfe)`: the jitted sampler with that fixed NFE, `(key, labels [n]) -> samples [n, ...]` in data space
    (digits: [-1, 1] images `[n, 8, 8, 1]`). `forward(nfe)`: one jitted network evaluation `(key, labels) -> ...`
    at the same batch, as the sampler at `nfe` evaluates it (the throughput reference). `conditional`: whether the
    samples follow `labels` (class accuracy is reported only then).
    """

    draw: Callable[[int], Draw]
    forward: Callable[[int], Draw]
    conditional: bool = True


def denoiser_generator(model, schedule, *, sampler: str, guidance_scale: float = 1.0) -> Generator:
    """A `Generator` of a denoiser module with one of `jdistill.diffusion.samplers`' samplers (x_T from the key)."""
    from flax import nnx

    from jdistill.diffusion.samplers import draw_from_prior, guided_denoiser, make_sampler

    conditional = bool(getattr(model, "num_classes", 0))
    shape = tuple(model.sample_shape)
    graphdef, params = nnx.split(model)

    def draw(nfe: int) -> Draw:
        run, _ = make_sampler(model, schedule, sampler=sampler, nfe=nfe, guidance_scale=guidance_scale)
        return draw_from_prior(run, schedule, params, shape, conditional=conditional)

    @jax.jit
    def evaluate(params, key, labels):
        x = schedule.prior(key, (labels.shape[0], *shape))
        denoise = guided_denoiser(
            nnx.merge(graphdef, params), schedule, labels if conditional else None, guidance_scale
        )
        return denoise(x, schedule.t_max)

    return Generator(draw, lambda nfe: lambda key, labels: evaluate(params, key, labels), conditional)


@dataclasses.dataclass
class BenchContext:
    """What a student's `build(context, data, seed)` gets: the teachers (`TrainedDenoiser`s) and where to work."""

    work_dir: Path
    data_dir: Any
    teachers: dict  # "digits" / "toy2d" -> jdistill.diffusion.load.TrainedDenoiser
    teacher_dirs: dict  # "digits" / "toy2d" -> the teacher's run directory
    toy: str | None  # the 2-D distribution (None: no 2-D part)
    guidance_scale: float

    def teacher(self, data: str):
        return self.teachers[data]

    def student_dir(self, name: str, data: str, seed: int) -> Path:
        """`<work dir>/students/<name>/<data>/seed<seed>`: where a student's runs and caches belong."""
        return self.work_dir / "students" / name / data / f"seed{seed}"


# -- timing ----------------------------------------------------------------------------------------------------------


def _timed(fn, *args) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds over all threads) of one call run to completion."""
    start, cpu = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start, time.process_time() - cpu


def draw_seeds(draw: Draw, labels, seeds: Sequence[int]) -> list[np.ndarray]:
    """One sample set per seed, drawn from `jax.random.key(seed)`."""
    return [np.asarray(draw(jax.random.key(seed), labels), np.float64) for seed in seeds]


@dataclasses.dataclass(frozen=True)
class Speed:
    """samples/s of a sampler and of one network evaluation on the same batch: by wall time, and by the process's
    CPU time (all threads; what the machine's other load does not inflate)."""

    sampler: float
    forward: float
    sampler_cpu: float
    forward_cpu: float


def samples_per_s(draw: Draw, forward: Draw, labels, repeats: int) -> Speed:
    """The `Speed` of `draw` and `forward` on the batch `labels`: after a warm-up call of each, the two are timed
    alternately `repeats` times (so load from other processes hits both alike); n / median seconds."""
    key = jax.random.key(0)
    _timed(draw, key, labels)
    _timed(forward, key, labels)
    draw_times, forward_times = [], []
    for _ in range(repeats):
        draw_times.append(_timed(draw, key, labels)[1:])
        forward_times.append(_timed(forward, key, labels)[1:])
    n = len(labels)

    def rate(times, which):
        return n / max(statistics.median(t[which] for t in times), 1e-9)

    return Speed(rate(draw_times, 0), rate(forward_times, 0), rate(draw_times, 1), rate(forward_times, 1))


def throughput_entry(speed: Speed, nfe: int) -> dict:
    """samples/s against one evaluation's / NFE: `ratio` by wall time (the goal, >= THROUGHPUT_GOAL) and `cpu_ratio`
    by process CPU time."""
    ratio = speed.sampler * nfe / speed.forward
    cpu_ratio = speed.sampler_cpu * nfe / speed.forward_cpu
    return {
        "samples_per_s": speed.sampler,
        "forward_samples_per_s": speed.forward,
        "ratio": ratio,
        "goal_met": ratio >= THROUGHPUT_GOAL,
        "cpu_samples_per_s": speed.sampler_cpu,
        "cpu_forward_samples_per_s": speed.forward_cpu,
        "cpu_ratio": cpu_ratio,
        "cpu_goal_met": cpu_ratio >= THROUGHPUT_GOAL,
    }


# -- scoring ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DigitsReference:
    """The classifier and the real sets every digits sample set is compared with."""

    classifier: Any
    train_features: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def score(self, images, labels, conditional: bool) -> dict:
        features, predictions = self.classifier.features_and_predictions(images)
        precision, recall = metrics.precision_recall(self.train_features, features)
        return {
            "fd": metrics.feature_fd(features, self.train_features),
            "precision": precision,
            "recall": recall,
            "class_accuracy": metrics.class_accuracy(predictions, labels) if conditional else None,
        }


def _mean_entry(per_seed: list[dict], speed: float, keys: Sequence[str]) -> tuple[dict, dict]:
    """(means over seeds with samples/s, the per-seed lists)."""
    lists = {key: [entry[key] for entry in per_seed] for key in keys if key != "samples_per_s"}
    means = {key: (None if None in values else float(np.mean(values))) for key, values in lists.items()}
    return dict(means, samples_per_s=speed), lists


def measure_digits(generator: Generator, nfes, reference: DigitsReference, seeds, repeats: int, grid_path=None):
    """({nfe: means}, {nfe: per-seed lists}, {nfe: throughput}) of one digits generator."""
    labels = jax.numpy.asarray(reference.test_labels)
    results, per_seed, throughput = {}, {}, {}
    for nfe in nfes:
        draw = generator.draw(nfe)
        sets = draw_seeds(draw, labels, seeds)
        scores = [reference.score(images, reference.test_labels, generator.conditional) for images in sets]
        speed = samples_per_s(draw, generator.forward(nfe), labels, repeats)
        results[str(nfe)], per_seed[str(nfe)] = _mean_entry(scores, speed.sampler, DIGITS_METRICS)
        throughput[str(nfe)] = throughput_entry(speed, nfe)
        if grid_path is not None:
            from jdistill.diffusion.grids import save_class_grid

            save_class_grid(grid_path(nfe), sets[0], reference.test_labels, per_class=GRID_PER_CLASS)
    return results, per_seed, throughput


def measure_toy(generator: Generator, nfes, toy: str, samples: int, seeds, repeats: int, plot_path=None):
    """({nfe: means}, {nfe: per-seed lists}, {nfe: throughput}) of one 2-D generator."""
    from jdistill.diffusion.data import toy2d

    labels = jax.numpy.zeros((samples,), jax.numpy.int32)
    results, per_seed, throughput, panels = {}, {}, {}, {}
    for nfe in nfes:
        draw = generator.draw(nfe)
        sets = draw_seeds(draw, labels, seeds)
        scores = []
        for seed, points in zip(seeds, sets, strict=True):
            real = np.asarray(toy2d(toy, jax.random.key(seed + TOY_SEED_OFFSET), samples))
            scores.append({"swd": metrics.sliced_wasserstein(points, real, seed), "mmd": metrics.mmd2(points, real)})
        speed = samples_per_s(draw, generator.forward(nfe), labels, repeats)
        results[str(nfe)], per_seed[str(nfe)] = _mean_entry(scores, speed.sampler, TOY_METRICS)
        throughput[str(nfe)] = throughput_entry(speed, nfe)
        panels[f"NFE {nfe}"] = sets[0]
    if plot_path is not None:
        from jdistill.diffusion.grids import save_scatter

        save_scatter(plot_path, panels, reference=np.asarray(toy2d(toy, jax.random.key(TOY_SEED_OFFSET), samples)))
    return results, per_seed, throughput


def toy_floor(toy: str, samples: int, seeds) -> dict:
    """SWD and MMD^2 between two fresh draws of the true distribution (means over seeds)."""
    from jdistill.diffusion.data import toy2d

    pairs = [
        (
            np.asarray(toy2d(toy, jax.random.key(s + 2 * TOY_SEED_OFFSET), samples)),
            np.asarray(toy2d(toy, jax.random.key(s + TOY_SEED_OFFSET), samples)),
        )
        for s in seeds
    ]
    return {
        "swd": float(np.mean([metrics.sliced_wasserstein(a, b, s) for s, (a, b) in zip(seeds, pairs, strict=True)])),
        "mmd": float(np.mean([metrics.mmd2(a, b) for a, b in pairs])),
    }


# -- teachers --------------------------------------------------------------------------------------------------------

SAMPLE_SHAPES = {"digits": (8, 8, 1), "toy2d": (2,)}


def load_teacher(run_dir, data: str):
    """The EMA denoiser of a diffusion run; a run whose samples are not `data`'s shape is a one-line error."""
    from jdistill.diffusion.load import load_denoiser

    teacher = load_denoiser(run_dir)
    shape = tuple(teacher.model.sample_shape)
    if shape != SAMPLE_SHAPES[data]:
        what = "8x8 digits [8, 8, 1]" if data == "digits" else "2-D points [2]"
        raise RunDirError(f"{run_dir}: its denoiser draws samples of shape {list(shape)}, not {what}")
    return teacher


def trained_teacher(preset: str, run_dir: Path, overrides: Sequence[str], data: str):
    """The teacher of `preset` trained into `run_dir`, or the one already there (a run's config.yaml)."""
    if not (run_dir / "config.yaml").is_file():
        from jdistill.configs import load_config
        from jdistill.train import run_teacher_student

        print(f"jdistill: training the {data} teacher ({preset}) into {run_dir}", file=sys.stderr)
        run_teacher_student(load_config(preset, list(overrides)), run_dir)
    return load_teacher(run_dir, data)


def toy_name(teacher) -> str:
    """The 2-D distribution a toy teacher was trained on (its recipe's `data` option)."""
    from jdistill.recipes.registry import build_recipe

    return build_recipe(teacher.config.distill).data


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    json_path: str
    teacher: str | None = None
    toy_teacher: str | None = None
    work_dir: str | None = None
    seeds: int = 3
    teacher_nfe: tuple[int, ...] = TEACHER_NFES
    teacher_sampler: str = "auto"
    guidance_scale: float = 1.0
    methods: tuple[str, ...] | None = None
    toy: str | None = "8gaussians"  # None: no 2-D part
    toy_samples: int = 2000
    toy_seeds: int | None = None  # None: `seeds`
    repeats: int = 5
    teacher_steps: int | None = None
    grids: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None

    def validate(self, students: dict) -> None:
        """One-line `ConfigError`s, before anything is loaded or computed (`students`: the method table)."""
        from jdistill.diffusion.data import toy2d_sampler
        from jdistill.diffusion.samplers import SAMPLERS

        if self.seeds < 1:
            raise ConfigError(f"--seeds: expected at least 1 seed, got {self.seeds}")
        if not self.teacher_nfe or min(self.teacher_nfe) < 1:
            raise ConfigError(f"--teacher-nfe: every NFE must be >= 1, got {list(self.teacher_nfe)}")
        if self.teacher_sampler != "auto" and self.teacher_sampler not in SAMPLERS:
            raise ConfigError(
                f"--teacher-sampler: unknown sampler {self.teacher_sampler!r}; "
                f"expected auto or one of {', '.join(SAMPLERS)}"
            )
        unknown = sorted(set(self.methods or ()) - set(students))
        if unknown:
            known = ", ".join(students) or "none registered yet"
            raise ConfigError(f"--methods: unknown method {unknown[0]!r}; expected one of: {known}")
        if self.toy is not None:
            toy2d_sampler(self.toy)
            if self.toy_samples < 2:
                raise ConfigError(f"--toy-samples: expected at least 2, got {self.toy_samples}")
        if self.toy_seeds is not None and self.toy_seeds < 1:
            raise ConfigError(f"--toy-seeds: expected at least 1 seed, got {self.toy_seeds}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats: expected at least 1, got {self.repeats}")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ConfigError(f"--teacher-steps: expected at least 1, got {self.teacher_steps}")
        parent = Path(self.json_path).parent
        if not fs.is_remote(self.json_path) and not parent.is_dir():
            raise ConfigError(f"--json {self.json_path}: folder {parent} does not exist")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    @property
    def toy_seed_list(self) -> list[int]:
        return list(range(self.seeds if self.toy_seeds is None else self.toy_seeds))

    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.json_path).with_suffix("").parent / "diffusion_bench"

    def grid_dir(self) -> Path:
        return Path(self.grids) if self.grids else Path(str(Path(self.json_path).with_suffix("")) + "_grids")


def sampler_for(teacher, settings: Settings) -> str:
    return DEFAULT_SAMPLERS[teacher.schedule.name] if settings.teacher_sampler == "auto" else settings.teacher_sampler


def check_teacher(teacher, settings: Settings, nfes) -> str:
    """The teacher's sampler, after the one-line checks of every NFE and of the guidance scale (before compute)."""
    from jdistill.diffusion.samplers import check_guidance, check_sampler

    sampler = sampler_for(teacher, settings)
    for nfe in nfes:
        check_sampler(sampler, teacher.schedule, nfe)
    check_guidance(teacher.model, settings.guidance_scale)
    return sampler


def _student_builder(name: str, student: Student):
    module, _, function = student.build.partition(":")
    return getattr(importlib.import_module(module), function)


def _teachers(settings: Settings) -> tuple[dict, dict]:
    steps = [f"student.train.steps={settings.teacher_steps}"] if settings.teacher_steps else []
    teachers, dirs = {}, {}
    if settings.teacher:
        dirs["digits"] = Path(settings.teacher)
        teachers["digits"] = load_teacher(settings.teacher, "digits")
    else:
        dirs["digits"] = settings.work() / "teacher_digits"
        teachers["digits"] = trained_teacher(DIGITS_PRESET, dirs["digits"], steps, "digits")
    if settings.toy is not None:
        if settings.toy_teacher:
            dirs["toy2d"] = Path(settings.toy_teacher)
            teachers["toy2d"] = load_teacher(settings.toy_teacher, "toy2d")
        else:
            dirs["toy2d"] = settings.work() / f"teacher_{settings.toy}"
            overrides = [*steps, f"distill.options.data={settings.toy}"]
            teachers["toy2d"] = trained_teacher(TOY_PRESET, dirs["toy2d"], overrides, "toy2d")
    return teachers, dirs


def run(settings: Settings, *, classifier=None, teachers: dict | None = None, students=None) -> dict:
    """The benchmark's result dict (the JSON). `classifier`, `teachers` ({"digits", "toy2d": TrainedDenoiser}) and
    `students` (a STUDENTS-like table) replace the defaults (tests plug tiny ones in)."""
    from jdistill.diffusion.data import digits
    from jdistill.diffusion.feature_classifier import classifier_info, load_or_train

    students = STUDENTS if students is None else students
    settings.validate(students)
    chosen = {name: entry for name, entry in students.items() if settings.methods is None or name in settings.methods}
    teacher_dirs: dict = {}
    if teachers is None:
        teachers, teacher_dirs = _teachers(settings)
    samplers = {data: check_teacher(teacher, settings, settings.teacher_nfe) for data, teacher in teachers.items()}
    toy = toy_name(teachers["toy2d"]) if settings.toy is not None and settings.toy_teacher else settings.toy
    context = BenchContext(settings.work(), settings.data_dir, teachers, teacher_dirs, toy, settings.guidance_scale)
    classifier = classifier or load_or_train(cache_dir=settings.cache_dir, data_dir=settings.data_dir)
    train_images, _ = digits("train", settings.data_dir)
    test_images, test_labels = digits("test", settings.data_dir)
    reference = DigitsReference(classifier, classifier.features(train_images), test_images, test_labels)
    real = reference.score(test_images, test_labels, conditional=True)
    seeds, grid_dir = settings.seed_list, settings.grid_dir()
    grid_dir.mkdir(parents=True, exist_ok=True)

    def digits_grid(name):
        return lambda nfe: grid_dir / f"digits_{name}_nfe{nfe}.png"

    result: dict = {"teacher": {}, "students": {}, "real_fd": real["fd"]}
    per_seed: dict = {"teacher": {}, "students": {}}
    throughput: dict = {"teacher": {}, "students": {}}
    teacher_generator = denoiser_generator(
        teachers["digits"].model,
        teachers["digits"].schedule,
        sampler=samplers["digits"],
        guidance_scale=settings.guidance_scale,
    )
    result["teacher"], per_seed["teacher"], throughput["teacher"] = measure_digits(
        teacher_generator, settings.teacher_nfe, reference, seeds, settings.repeats, digits_grid("teacher")
    )
    for name, entry in chosen.items():
        if "digits" not in entry.data:
            continue
        outcome = []
        for seed in seeds:
            student = _student_builder(name, entry)(context, "digits", seed)
            grid = digits_grid(name) if seed == seeds[0] else None
            outcome.append(measure_digits(student, entry.nfes, reference, [seed], settings.repeats, grid))
        result["students"][name], per_seed["students"][name], throughput["students"][name] = _merge_seeds(
            outcome, DIGITS_METRICS
        )
    if toy is not None and "toy2d" in teachers:
        result["toy2d"], per_seed["toy2d"], throughput["toy2d"] = _toy_part(
            settings, context, teachers["toy2d"], samplers["toy2d"], chosen, toy, grid_dir
        )
    result["per_seed"] = per_seed
    result["throughput"] = throughput
    result["goals"] = goals(result)
    result["real"] = dict(real, train_examples=len(train_images), test_examples=len(test_images))
    result["classifier"] = classifier_info(classifier)
    result["settings"] = {
        "seeds": seeds,
        "teacher_sampler": samplers["digits"],
        "toy_sampler": samplers.get("toy2d"),
        "guidance_scale": settings.guidance_scale,
        "digits_samples": len(test_labels),
        "toy_samples": settings.toy_samples if settings.toy is not None else None,
        "toy_seeds": settings.toy_seed_list if settings.toy is not None else None,
        "teacher_runs": {data: str(path) for data, path in teacher_dirs.items()},
        "grids": str(grid_dir),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    return result


def _merge_seeds(outcomes, keys: Sequence[str]) -> tuple[dict, dict, dict]:
    """Per-seed `measure_*` outcomes (one seed each) -> (means, per-seed lists, throughput) over the seeds: metric
    means, the median of the seeds' samples/s, and the throughput entry of the median seed."""
    results, per_seed, throughput = {}, {}, {}
    for nfe in outcomes[0][0]:
        lists = {key: [per[nfe][key][0] for _, per, _ in outcomes] for key in outcomes[0][1][nfe]}
        speeds = [res[nfe]["samples_per_s"] for res, _, _ in outcomes]
        means = {key: (None if None in values else float(np.mean(values))) for key, values in lists.items()}
        results[nfe] = dict(means, samples_per_s=float(statistics.median(speeds)))
        per_seed[nfe] = lists
        middle = int(np.argsort(speeds)[len(speeds) // 2])
        throughput[nfe] = outcomes[middle][2][nfe]
    assert all(set(entry) == set(keys) for entry in results.values())
    return results, per_seed, throughput


def _toy_part(settings: Settings, context: BenchContext, teacher, sampler: str, chosen: dict, toy: str, grid_dir):
    seeds = settings.toy_seed_list
    generator = denoiser_generator(teacher.model, teacher.schedule, sampler=sampler)
    part: dict = {"distribution": toy, "samples": settings.toy_samples, "teacher": {}, "students": {}}
    per_seed: dict = {"teacher": {}, "students": {}}
    throughput: dict = {"teacher": {}, "students": {}}
    part["teacher"], per_seed["teacher"], throughput["teacher"] = measure_toy(
        generator,
        settings.teacher_nfe,
        toy,
        settings.toy_samples,
        seeds,
        settings.repeats,
        grid_dir / "toy2d_teacher.png",
    )
    for name, entry in chosen.items():
        if "toy2d" not in entry.data:
            continue
        outcome = []
        for seed in seeds:
            student = _student_builder(name, entry)(context, "toy2d", seed)
            plot = grid_dir / f"toy2d_{name}.png" if seed == seeds[0] else None
            outcome.append(measure_toy(student, entry.nfes, toy, settings.toy_samples, [seed], settings.repeats, plot))
        part["students"][name], per_seed["students"][name], throughput["students"][name] = _merge_seeds(
            outcome, TOY_METRICS
        )
    floor = toy_floor(toy, settings.toy_samples, seeds)
    part["real_swd"], part["real_mmd"] = floor["swd"], floor["mmd"]
    return part, per_seed, throughput


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_result(result: dict) -> str:
    """The benchmark as text tables (digits, then the 2-D toy)."""
    settings = result["settings"]
    lines = [
        f"digits: {settings['digits_samples']} conditional samples per seed, seeds {settings['seeds']}, teacher "
        f"sampler {settings['teacher_sampler']}, guidance {settings['guidance_scale']}; classifier test accuracy "
        f"{_number(result['classifier']['test_accuracy'])}; floor real_fd {_number(result['real_fd'])} (test split "
        f"vs train: precision {_number(result['real']['precision'])}, recall {_number(result['real']['recall'])})",
        f"{'model':<24} {'NFE':>4} {'FD':>9} {'prec':>7} {'recall':>7} {'cls acc':>8} {'samples/s':>10} "
        f"{'vs fwd/NFE':>10} {'(CPU)':>6}",
    ]
    rows = [("teacher", result["teacher"], result["throughput"]["teacher"])]
    rows += [(name, res, result["throughput"]["students"][name]) for name, res in result["students"].items()]
    for name, res, speed in rows:
        for nfe, entry in res.items():
            lines.append(
                f"{name:<24} {nfe:>4} {_number(entry['fd'], 3):>9} {_number(entry['precision'], 3):>7} "
                f"{_number(entry['recall'], 3):>7} {_number(entry['class_accuracy'], 3):>8} "
                f"{entry['samples_per_s']:>10.1f} {speed[nfe]['ratio']:>10.2f} {speed[nfe]['cpu_ratio']:>6.2f}"
            )
    toy = result.get("toy2d")
    if toy:
        lines += [
            "",
            f"2-D {toy['distribution']}: {toy['samples']} samples per seed, sampler {settings['toy_sampler']}; floor "
            f"SWD {_number(toy['real_swd'])}, MMD^2 {_number(toy['real_mmd'], 5)}",
            f"{'model':<24} {'NFE':>4} {'SWD':>9} {'MMD^2':>9} {'samples/s':>10} {'vs fwd/NFE':>10} {'(CPU)':>6}",
        ]
        speeds = result["throughput"]["toy2d"]
        toy_rows = [("teacher", toy["teacher"], speeds["teacher"])]
        toy_rows += [(name, res, speeds["students"][name]) for name, res in toy["students"].items()]
        for name, res, speed in toy_rows:
            for nfe, entry in res.items():
                lines.append(
                    f"{name:<24} {nfe:>4} {_number(entry['swd']):>9} {_number(entry['mmd'], 5):>9} "
                    f"{entry['samples_per_s']:>10.1f} {speed[nfe]['ratio']:>10.2f} {speed[nfe]['cpu_ratio']:>6.2f}"
                )
    lines.append(
        f"(vs fwd/NFE: samples/s x NFE / single-evaluation samples/s, by wall time; (CPU): the same by process CPU "
        f"time; goal >= {THROUGHPUT_GOAL})"
    )
    lines += format_goals(result.get("goals", {}))
    return "\n".join(lines)


def run_bench_diffusion(args) -> int:
    """`jdistill bench diffusion` (see `jdistill.bench.diffusion_cli` for the options)."""
    settings = Settings(
        json_path=args.json,
        teacher=args.teacher,
        toy_teacher=args.toy_teacher,
        work_dir=args.work_dir,
        seeds=args.seeds,
        teacher_nfe=tuple(args.teacher_nfe),
        teacher_sampler=args.teacher_sampler,
        guidance_scale=args.guidance_scale,
        methods=tuple(args.methods) if args.methods else None,
        toy=None if args.toy == "none" else args.toy,
        toy_samples=args.toy_samples,
        toy_seeds=args.toy_seeds,
        repeats=args.repeats,
        teacher_steps=args.teacher_steps,
        grids=args.grids,
        data_dir=args.data_dir,
    )
    result = run(settings)
    print(format_result(result))
    fs.write_text_atomic(settings.json_path, strict_json.dumps(result, indent=2) + "\n")
    print(f"wrote {settings.json_path} and the grids in {result['settings']['grids']}")
    return 0

"""A distillation job (`jdistill train`): the stages a recipe needs, each in its own folder of the run directory.

  1. `teacher`            when the recipe's teacher is a separate model: trained on labels (policy `frozen`,
                          `cached_topk`), loaded from `teacher.init_from`, or kept at its random init
                          (`random_init`);
  2. with `student.prune`: the teacher depth-pruned (`jdistill.train.prune_stage`: `prune.json`, `student_init/`),
     then `student_pruned`, that pruned model evaluated without training;
  3. `student_scratch`    the student from its initialisation on labels only (when `run.baseline`), the comparison
                          for the recipe: from a random init (always, with `student.prune`), or from
                          `student.init_from` (a checkpoint, e.g. a teacher pruned by `jdistill prune`) when set;
     `student_pruned_ce`  with `student.prune` (and `run.baseline`): the pruned teacher trained on labels only, the
                          fine-tuning baseline at the recipe's budget;
  4. `student_<recipe>`   the same student (same init, data order and budget) trained with the recipe; recipes
                          with `generations > 1` (born-again) train `student_<recipe>_gen<k>`, each taught by the
                          generation before it;
  5. `student_<name>`     for each entry of `run.compare`: the same student trained with that objective instead
                          (`RunConfig.compare_distill`), e.g. off-policy KD against on-policy GKD in one job.
Then a table, `summary.json`, `learning_curves.png`, and with `run.export: DIR` the last student stage as a
Hugging Face checkpoint in DIR (`jdistill.train.export_step`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jdistill.configs import Config, to_dict
from jdistill.data.corpus_tokenizer import with_corpus_tokenizer
from jdistill.errors import ConfigError
from jdistill.eval import report
from jdistill.hf.init_from import resolve_init_from
from jdistill.hf.vocab_policy import with_real_vocab
from jdistill.io import fs
from jdistill.models import Transformer, count_params
from jdistill.recipes import Supervised
from jdistill.recipes.registry import build_recipe
from jdistill.train import inputs, sharding
from jdistill.train.distributed import barrier
from jdistill.train.evaluation import check_samples, evaluate_loaded
from jdistill.train.export_step import check_export, export_final
from jdistill.train.loop import PURPOSE_EXTRA_METRICS, StageResult, run_stage, stage_key
from jdistill.train.prune_stage import prune_teacher, pruned_stage_config, resolve_prune
from jdistill.train.restore import load_pretrained
from jdistill.train.rundir import check_remote_run_dir, check_run_dir, prepare_run_dir, write_config
from jdistill.train.stop_tokens import with_stop_tokens
from jdistill.train.teacher_tokens import teacher_data_config, teacher_view_dataset_fn, with_teacher_tokens
from jdistill.train.wall import WallClock
from jdistill.train.writers import write_json_atomic

TEACHER_INIT, STUDENT_INIT = 1, 2
STAGE_ORDER = ("teacher", "student_scratch", "student_pruned", "student_pruned_ce")  # then the recipe's, compared


def checked_recipe(config: Config):
    """The job's recipe, after its `check` against the whole config: option and compatibility errors are one-line
    `ConfigError`s here, before any stage trains (also run by `jdistill compile`). LM recipes that compare logits
    get the real vocabulary sizes of `distill.vocab` (`jdistill.hf.vocab_policy`)."""
    recipe = build_recipe(config.distill)
    recipe.check(config)
    recipe = with_stop_tokens(recipe, config)  # generating recipes stop at the data tokenizer's EOS
    recipe = with_real_vocab(recipe, config)  # tokenizer and vocabulary checks (distill.vocab)
    return with_teacher_tokens(recipe, config)  # a uld teacher with its own tokenizer reads its own tokens


def student_stage_names(recipe) -> list[str]:
    base = f"student_{recipe.name}"
    return [base] if recipe.generations == 1 else [f"{base}_gen{k}" for k in range(1, recipe.generations + 1)]


def prepared_config(config: Config) -> Config:
    """The config a job runs: `data.tokenizer` "bpe:VOCAB" resolved to its trained folder, the pruned student's
    architecture derived from the teacher, and stages with `init_from` given their checkpoint's architecture."""
    return resolve_init_from(resolve_prune(with_corpus_tokenizer(config)))


def compared_recipes(config: Config, recipe) -> dict:
    """{stage name: checked recipe} of `run.compare`; one-line ConfigErrors for a name taken by another stage or a
    recipe that cannot run as a plain comparison stage (teacher cache, random teacher, generations)."""
    taken = {"teacher", "student_scratch", "student_pruned", "student_pruned_ce", *student_stage_names(recipe)}
    compared = {}
    for name in config.run.compare:
        stage = f"student_{name}"
        if stage in taken:
            raise ConfigError(f"run.compare.{name}: stage {stage} is already one of the job's stages; rename it")
        other = checked_recipe(dataclasses.replace(config, distill=config.run.compare_distill(name, config.distill)))
        if other.policy.cache or other.policy.random_teacher or other.generations > 1:
            raise ConfigError(
                f"run.compare.{name}: recipe {other.name!r} (teacher policy {other.teacher_policy}, "
                f"{other.generations} generations) cannot run as a comparison stage"
            )
        compared[stage] = other
    return compared


def random_teacher(config: Config, recipe) -> StageResult:
    """The teacher at its random initialisation (policy `random_init`): never trained, never changed. It is scored
    with the recipe's end-of-stage metrics (random teachers: linear-probe and k-NN accuracy of its features) on the
    same evaluation split and probe halves as the student (`stage_key(seed, STUDENT_INIT)`), so the summary can
    compare them pair-wise."""
    started = time.perf_counter()
    model = Transformer(config.teacher.model, rngs=nnx.Rngs(params=stage_key(config.seed, TEACHER_INIT)))
    probe_key = jax.random.fold_in(stage_key(config.seed, STUDENT_INIT), PURPOSE_EXTRA_METRICS)
    metrics = recipe.extra_metrics(model, inputs.eval_batches(config.data, config.teacher.model.kind), probe_key)
    graphdef, params = nnx.split(model)
    return StageResult("teacher", graphdef, params, metrics, count_params(model), time.perf_counter() - started)


def check_job(config: Config, *, resume: bool = False):
    """(prepared config, checked recipe, compared recipes): every check that needs no training, run before the run
    directory is created so that a job that cannot run leaves nothing behind (docs/reliability.md). Cheap checks
    first; data checks (tokenising raw text, once) last."""
    config = prepared_config(config)
    for key, expected in [] if resume else config.window_problems():  # the student pruned, init_from read
        raise ConfigError(f"{key} expected {expected}, got {config.data.seq_len}")
    recipe = checked_recipe(config)
    compared = compared_recipes(config, recipe)
    if config.student.prune.layers is not None and not (recipe.needs_teacher_stage or config.teacher.init_from):
        raise ConfigError(f"student.prune: recipe {recipe.name!r} has no trained or loaded teacher to prune")
    check_export(config, resume=resume)  # run.export: a free folder and an exportable student, before any compute
    sharding.make_mesh(config.mesh)  # the mesh fits the devices (MeshError) in milliseconds, not after model init
    sharding.resolve_rules(config.mesh.rules)
    check_samples(config)  # run.sample_prompts fit the models
    for checked in (recipe, *compared.values()):
        inputs.check_data(config, checked)  # data errors (and tokenising raw text, once)
    return config, recipe, compared


def run_job(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    interrupt_at: tuple[str, int] | None = None,
    dataset_fns: dict | None = None,
) -> dict:
    """Run (or resume) the stages; returns the summary written to `run_dir/summary.json`.

    `interrupt_at=(stage, step)` stops that stage after that step's checkpoint, as if the process were killed,
    and returns an empty dict (for resume tests). `dataset_fns[stage]` transforms that stage's training data.
    """
    started = time.perf_counter()
    run_dir = fs.path(run_dir)  # a local folder or a gs:// URL
    check_run_dir(run_dir, resume=resume)  # every host: the same verdict, before any other check costs time
    config, recipe, compared = check_job(config, resume=resume)
    check_remote_run_dir(config, recipe, run_dir)  # gs://: pieces that need a local folder refused here
    barrier("run_dir_checked")
    if jax.process_index() == 0:
        prepare_run_dir(run_dir, resume=resume)
        if not resume:
            write_config(run_dir, to_dict(config))
    barrier("run_dir")  # other hosts start once process 0 has created the run directory
    clock = WallClock(run_dir / "wall.json", resume=resume, started=started)  # every process of the run
    show = config.run.progress if progress is None else progress
    if show and jax.process_index() == 0:
        print(f"jdistill: run directory {run_dir}{' (resuming)' if resume else ''}", file=sys.stderr, flush=True)
    results: dict[str, StageResult] = {}

    def stage(name, stage_config, stage_recipe, purpose, teacher=None):
        interrupt_step = interrupt_at[1] if interrupt_at and interrupt_at[0] == name else None
        results[name] = run_stage(
            name,
            stage_config,
            recipe=stage_recipe,
            init_key=stage_key(config.seed, purpose),
            stage_dir=run_dir / name,
            teacher=teacher,
            interrupt_at_step=interrupt_step,
            dataset_fn=(dataset_fns or {}).get(name),
            data_config=config.data,
            seed=config.seed,
            run_dir=run_dir,
            resume=resume,
            progress=show,
            tensorboard=config.run.tensorboard,
            mesh_config=config.mesh,
            run_config=config.run,
            clocks=(clock,),
        )
        return interrupt_step is not None and interrupt_step < stage_config.train.steps

    teacher = None
    if recipe.needs_teacher_stage or any(other.needs_teacher_stage for other in compared.values()):
        if config.teacher.init_from:
            teacher_config = dataclasses.replace(config, data=teacher_data_config(config))  # its own tokenizer
            teacher = results["teacher"] = evaluate_loaded(
                load_pretrained(config.teacher, mesh_config=config.mesh), teacher_config, run_dir / "teacher"
            )
        else:
            if stage("teacher", config.teacher, Supervised(), TEACHER_INIT):
                return {}
            teacher = results["teacher"]
    elif recipe.policy.random_teacher:
        teacher = results["teacher"] = random_teacher(config, recipe)
    if recipe.policy.cache:  # the student reads the teacher's top-k from disk, never the teacher
        from jdistill.train.teacher_cache import job_dataset_fn

        cached = job_dataset_fn(config, recipe, teacher, run_dir)
        dataset_fns = {**{name: cached for name in student_stage_names(recipe)}, **(dataset_fns or {})}
        teacher = None
    for names, stage_recipe in ((student_stage_names(recipe), recipe), *(([n], r) for n, r in compared.items())):
        own_tokens = teacher_view_dataset_fn(config, stage_recipe, config.seed, config.student.train.batch_size)
        if own_tokens is not None:  # the teacher reads its own tokenizer's tokens of each window
            dataset_fns = {**{name: own_tokens for name in names}, **(dataset_fns or {})}
    student = config.student  # the stage config the recipe's student starts from
    if config.student.prune.layers is not None:
        student = pruned_stage_config(config, prune_teacher(config, results["teacher"], run_dir))
        results["student_pruned"] = evaluate_loaded(
            dataclasses.replace(load_pretrained(student, "student"), name="student_pruned"),
            config,
            run_dir / "student_pruned",
            model_config=student.model,
        )
    if config.run.baseline and stage("student_scratch", config.student, Supervised(), STUDENT_INIT):
        return {}  # with student.prune, config.student has no init_from: a random init
    pruned_ce = student is not config.student and config.run.baseline
    if pruned_ce and stage("student_pruned_ce", student, Supervised(), STUDENT_INIT):
        return {}
    student_teacher = teacher
    for name in student_stage_names(recipe):
        if stage(name, student, recipe, STUDENT_INIT, teacher=student_teacher):
            return {}
        if recipe.generations > 1:
            student_teacher = results[name]
    for name, other in compared.items():
        if stage(
            name,
            student,
            other,
            STUDENT_INIT,
            teacher=results.get("teacher") if other.policy.separate_teacher else None,
        ):
            return {}
    order = [name for name in STAGE_ORDER if name in results] + [name for name in results if name not in STAGE_ORDER]
    summary: dict[str, Any] = {
        name: dict(results[name].metrics, params=results[name].params_count, wall_seconds=results[name].wall_seconds)
        for name in order
        if results[name].metrics
    }
    summary["wall_seconds"] = clock.total()
    clock.save()
    summary["data"] = config.data.name
    summary["recipe"] = recipe.name
    exported = export_final(config, run_dir, student_stage_names(recipe)[-1], resume=resume)
    if exported is not None:
        summary["export"] = str(exported)
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "summary.json", summary)
        if config.run.plot:
            report.plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curves.png", list(results))
    return summary


def run_teacher_student(config: Config, run_dir: Path, **kwargs) -> dict:
    """The default job (KD recipe): teacher, student_scratch, student_kd. Kept as the documented entry point."""
    return run_job(config, run_dir, **kwargs)

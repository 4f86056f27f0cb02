"""The teacher -> student job (the default `jdistill train`).

Three stages on one dataset, each in its own folder of the run directory:
  1. `teacher`          the teacher, trained on labels;
  2. `student_scratch`  the student, trained on labels only;
  3. `student_kd`       the same student (same init, same data order, same budget) trained with the
                        distillation objective against the frozen teacher.
Then a table, `summary.json`, and `learning_curves.png`.
"""

from __future__ import annotations

import time
from pathlib import Path

from jdistill.configs import Config, to_dict
from jdistill.eval import report
from jdistill.recipes import KnowledgeDistillation, Supervised
from jdistill.train.loop import StageResult, run_stage, stage_key
from jdistill.train.rundir import prepare_run_dir, write_config
from jdistill.train.writers import write_json_atomic

TEACHER_INIT, STUDENT_INIT = 1, 2
STAGES = ("teacher", "student_scratch", "student_kd")


def run_teacher_student(config: Config, run_dir: Path, *, resume: bool = False, progress: bool | None = None,
                        interrupt_at: tuple[str, int] | None = None) -> dict:
    """Run (or resume) the three stages; returns the summary written to `run_dir/summary.json`.

    `interrupt_at=(stage, step)` stops that stage after that step's checkpoint, as if the process were killed,
    and returns an empty dict (for resume tests).
    """
    started = time.perf_counter()
    run_dir = prepare_run_dir(Path(run_dir), resume=resume)
    if not resume:
        write_config(run_dir, to_dict(config))
    show = config.run.progress if progress is None else progress
    common = dict(data_config=config.data, seed=config.seed, run_dir=run_dir, resume=resume, progress=show,
                  tensorboard=config.run.tensorboard)
    kd = KnowledgeDistillation.from_config(config.distill)
    plan = [
        ("teacher", config.teacher, Supervised(), TEACHER_INIT, False),
        ("student_scratch", config.student, Supervised(), STUDENT_INIT, False),
        ("student_kd", config.student, kd, STUDENT_INIT, True),
    ]
    results: dict[str, StageResult] = {}
    for name, stage, recipe, purpose, needs_teacher in plan:
        interrupt_step = interrupt_at[1] if interrupt_at and interrupt_at[0] == name else None
        result = run_stage(name, stage, recipe=recipe, init_key=stage_key(config.seed, purpose),
                           stage_dir=run_dir / name, teacher=results["teacher"] if needs_teacher else None,
                           interrupt_at_step=interrupt_step, **common)
        results[name] = result
        if interrupt_step is not None and interrupt_step < stage.train.steps:
            return {}
    summary = {name: dict(result.metrics, params=result.params_count, wall_seconds=result.wall_seconds)
               for name, result in results.items()}
    summary["wall_seconds"] = time.perf_counter() - started
    summary["data"] = config.data.name
    write_json_atomic(run_dir / "summary.json", summary)
    if config.run.plot:
        report.plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curves.png", STAGES)
    return summary

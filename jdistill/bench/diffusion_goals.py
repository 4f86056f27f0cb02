"""The issue's goals for the distilled digits students, judged on `jdistill bench diffusion`'s result.

Each goal compares a student's digits-FD at a few steps with the teacher's (lower FD is better):

    few-step consistency   consistency / tcd / hyper_sd:  FD_student(4) / FD_teacher(35) <= 1.5
                           hyper_sd_4step (Hyper-SD's 4-step model, segments 8 -> 4): the same
    progressive            progressive:                   FD_student(4) / FD_teacher(4)  <  1
    one-step reflow        reflow:                        FD_teacher(1) / FD_student(1)  >= 3

and the one-step generators' goals (issue 16), each under its own name:

    headline               sid / dmd2:                    FD_student(1) / FD_teacher(35) <= 1, and precision and
                                                          recall_student(1) / _teacher(35) >= 0.9 (no mode collapse)
    beats the teacher      every one-step generator:      FD_student(1) / FD_teacher(1 and 2) < 1

`goals(result)` judges each on the means over seeds (`met`) and on every seed alone, the teacher and student drawn
from the same seed (`met_every_seed`); a goal whose student or NFE was not measured is left out. Reported as they
are: a goal not met is written as not met.
"""

from __future__ import annotations

import dataclasses
import operator

COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


@dataclasses.dataclass(frozen=True)
class Goal:
    method: str
    student_nfe: int
    teacher_nfe: int
    threshold: float
    inverted: bool = False  # True: the ratio is teacher / student (the student must be that many times better)
    sign: str = "<="  # ratio <sign> threshold: the goal is met
    metric: str = "fd"  # the compared number (fd, precision, recall)
    name: str | None = None  # its key in the judged dict (default: the method)

    @property
    def key(self) -> str:
        return self.name or self.method

    def met(self, ratio: float) -> bool:
        return bool(COMPARE[self.sign](ratio, self.threshold))

    def ratio(self, student_fd: float, teacher_fd: float) -> float:
        return teacher_fd / student_fd if self.inverted else student_fd / teacher_fd

    @property
    def statement(self) -> str:
        metric, test = "FD" if self.metric == "fd" else self.metric, f"{self.sign} {self.threshold:g}"
        if self.inverted:
            return f"{metric} teacher NFE {self.teacher_nfe} / {self.method} NFE {self.student_nfe} {test}"
        return f"{metric} {self.method} NFE {self.student_nfe} / teacher NFE {self.teacher_nfe} {test}"


GOALS: tuple[Goal, ...] = (
    Goal("consistency", 4, 35, 1.5),
    Goal("tcd", 4, 35, 1.5),
    Goal("hyper_sd", 4, 35, 1.5),
    Goal("hyper_sd_4step", 4, 35, 1.5),
    Goal("progressive", 4, 4, 1.0, sign="<"),
    Goal("reflow", 1, 1, 3.0, inverted=True, sign=">="),
)

# the one-step generators of `jdistill.bench.diffusion_generators` (multi_student: both students, NFE 1 per sample)
ONE_STEP_GENERATORS = ("dmd", "dmd2", "sid", "dmd_rl", "dmd2_gan", "ladd", "emd", "disback", "multi_student")
GENERATOR_GOALS: tuple[Goal, ...] = (
    *(
        goal
        for method in ("sid", "dmd2")
        for goal in (
            Goal(method, 1, 35, 1.0, name=f"{method} 1-step FD"),
            Goal(method, 1, 35, 0.9, sign=">=", metric="precision", name=f"{method} 1-step precision"),
            Goal(method, 1, 35, 0.9, sign=">=", metric="recall", name=f"{method} 1-step recall"),
        )
    ),
    *(
        Goal(method, 1, teacher_nfe, 1.0, sign="<", name=f"{method} beats the teacher's {teacher_nfe}-step")
        for method in ONE_STEP_GENERATORS
        for teacher_nfe in (1, 2)
    ),
)


def goals(result: dict, table: tuple[Goal, ...] = GOALS + GENERATOR_GOALS) -> dict:
    """{goal key: {"goal", "ratio", "met", "ratio_per_seed", "met_every_seed"}} for the goals whose student and NFEs
    `result` (the benchmark's dict: "teacher", "students", "per_seed") holds."""
    judged = {}
    for goal in table:
        student = result["students"].get(goal.method, {}).get(str(goal.student_nfe))
        teacher = result["teacher"].get(str(goal.teacher_nfe))
        if student is None or teacher is None:
            continue
        ratio = goal.ratio(student[goal.metric], teacher[goal.metric])
        student_seeds = result["per_seed"]["students"][goal.method][str(goal.student_nfe)][goal.metric]
        teacher_seeds = result["per_seed"]["teacher"][str(goal.teacher_nfe)][goal.metric]
        per_seed = [goal.ratio(s, t) for s, t in zip(student_seeds, teacher_seeds, strict=True)]
        judged[goal.key] = {
            "goal": goal.statement,
            "ratio": ratio,
            "met": goal.met(ratio),
            "ratio_per_seed": per_seed,
            "met_every_seed": all(goal.met(value) for value in per_seed),
        }
    return judged


def format_goals(judged: dict) -> list[str]:
    """One line per goal: the statement, the ratio (per seed) and met / not met."""
    lines = []
    for method, entry in judged.items():
        seeds = ", ".join(f"{value:.2f}" for value in entry["ratio_per_seed"])
        verdict = "met" if entry["met"] else "NOT met"
        every = "" if entry["met"] == entry["met_every_seed"] else " (not on every seed)"
        lines.append(f"goal {method}: {entry['goal']}: {entry['ratio']:.2f} (seeds {seeds}): {verdict}{every}")
    return lines

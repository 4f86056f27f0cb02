"""The issue's goals for the distilled digits students, judged on `jdistill bench diffusion`'s result.

Each goal compares a student's digits-FD at a few steps with the teacher's (lower FD is better):

    few-step consistency   consistency / tcd / hyper_sd:  FD_student(4) / FD_teacher(35) <= 1.5
                           hyper_sd_4step (Hyper-SD's 4-step model, segments 8 -> 4): the same
    progressive            progressive:                   FD_student(4) / FD_teacher(4)  <  1
    one-step reflow        reflow:                        FD_teacher(1) / FD_student(1)  >= 3

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

    def met(self, ratio: float) -> bool:
        return bool(COMPARE[self.sign](ratio, self.threshold))

    def ratio(self, student_fd: float, teacher_fd: float) -> float:
        return teacher_fd / student_fd if self.inverted else student_fd / teacher_fd

    @property
    def statement(self) -> str:
        sign = self.sign
        if self.inverted:
            return f"FD teacher NFE {self.teacher_nfe} / {self.method} NFE {self.student_nfe} {sign} {self.threshold:g}"
        return f"FD {self.method} NFE {self.student_nfe} / teacher NFE {self.teacher_nfe} {sign} {self.threshold:g}"


GOALS: tuple[Goal, ...] = (
    Goal("consistency", 4, 35, 1.5),
    Goal("tcd", 4, 35, 1.5),
    Goal("hyper_sd", 4, 35, 1.5),
    Goal("hyper_sd_4step", 4, 35, 1.5),
    Goal("progressive", 4, 4, 1.0, sign="<"),
    Goal("reflow", 1, 1, 3.0, inverted=True, sign=">="),
)


def goals(result: dict, table: tuple[Goal, ...] = GOALS) -> dict:
    """{method: {"goal", "ratio", "met", "ratio_per_seed", "met_every_seed"}} for the goals whose student and NFEs
    `result` (the benchmark's dict: "teacher", "students", "per_seed") holds."""
    judged = {}
    for goal in table:
        student = result["students"].get(goal.method, {}).get(str(goal.student_nfe))
        teacher = result["teacher"].get(str(goal.teacher_nfe))
        if student is None or teacher is None:
            continue
        ratio = goal.ratio(student["fd"], teacher["fd"])
        student_seeds = result["per_seed"]["students"][goal.method][str(goal.student_nfe)]["fd"]
        teacher_seeds = result["per_seed"]["teacher"][str(goal.teacher_nfe)]["fd"]
        per_seed = [goal.ratio(s, t) for s, t in zip(student_seeds, teacher_seeds, strict=True)]
        judged[goal.method] = {
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

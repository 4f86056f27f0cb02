"""The students' goals of `jdistill bench diffusion`, judged on a hand-made result: means and every seed, each
goal's direction, the boundary, and goals left out when their student was not measured."""

import pytest

from jdistill.bench.diffusion_goals import format_goals, goals


def entry(fds, precision=(0.6, 0.6), recall=(0.9, 0.9)):
    means = {"fd": sum(fds) / len(fds), "precision": sum(precision) / 2, "recall": sum(recall) / 2}
    return means, {"fd": list(fds), "precision": list(precision), "recall": list(recall)}


def result(students: dict) -> dict:
    teacher = {"1": [60.0, 60.0], "2": [50.0, 50.0], "4": [12.0, 12.0], "35": [1.4, 1.4]}
    out = {"teacher": {}, "students": {}, "per_seed": {"teacher": {}, "students": {}}}
    for nfe, fds in teacher.items():
        out["teacher"][nfe], out["per_seed"]["teacher"][nfe] = entry(fds)
    for method, by_nfe in students.items():
        out["students"][method], out["per_seed"]["students"][method] = {}, {}
        for nfe, fds in by_nfe.items():
            out["students"][method][nfe], out["per_seed"]["students"][method][nfe] = entry(fds)
    return out


def test_each_goal_in_its_direction_on_the_means_and_on_every_seed():
    judged = goals(
        result(
            {
                "consistency": {"4": [1.9, 2.2]},  # mean 2.05 / 1.4 = 1.46 <= 1.5; seed 1 alone 1.57
                "tcd": {"4": [2.2, 2.2]},  # 1.57: not met
                "progressive": {"4": [11.0, 13.0], "1": [50.0, 50.0]},  # 12 / 12 = 1: not below 1
                "reflow": {"1": [20.0, 20.0]},  # 60 / 20 = 3: met at the boundary
            }
        )
    )
    assert set(judged) == {"consistency", "tcd", "progressive", "reflow"}  # hyper_sd not measured: left out
    assert judged["consistency"]["ratio"] == pytest.approx(2.05 / 1.4)
    assert judged["consistency"]["met"] and not judged["consistency"]["met_every_seed"]
    assert judged["consistency"]["ratio_per_seed"] == pytest.approx([1.9 / 1.4, 2.2 / 1.4])
    assert not judged["tcd"]["met"]
    assert judged["progressive"]["ratio"] == pytest.approx(1.0) and not judged["progressive"]["met"]
    assert judged["reflow"]["ratio"] == pytest.approx(3.0) and judged["reflow"]["met"]
    assert judged["reflow"]["goal"] == "FD teacher NFE 1 / reflow NFE 1 >= 3"
    lines = format_goals(judged)
    assert lines[0].endswith(": met (not on every seed)") and lines[1].endswith("NOT met")


def test_the_one_step_generators_goals():
    """SiD's headline (FD <= the teacher's 35-step, precision and recall >= 0.9 of its) and every one-step generator
    below the teacher's 1- and 2-step FD, each under its own key."""
    out = result({"sid": {"1": [1.3, 1.6]}, "ladd": {"1": [55.0, 45.0]}})
    out["per_seed"]["students"]["sid"]["1"].update(precision=[0.5, 0.7], recall=[0.8, 0.9])
    out["students"]["sid"]["1"].update(precision=0.6, recall=0.85)
    judged = goals(out)
    assert judged["sid 1-step FD"]["ratio"] == pytest.approx(1.45 / 1.4) and not judged["sid 1-step FD"]["met"]
    assert judged["sid 1-step FD"]["ratio_per_seed"] == pytest.approx([1.3 / 1.4, 1.6 / 1.4])
    assert judged["sid 1-step precision"]["met"] and not judged["sid 1-step precision"]["met_every_seed"]
    assert judged["sid 1-step recall"]["ratio"] == pytest.approx(0.85 / 0.9) and judged["sid 1-step recall"]["met"]
    assert judged["sid 1-step precision"]["goal"] == "precision sid NFE 1 / teacher NFE 35 >= 0.9"
    assert judged["sid beats the teacher's 1-step"]["met"] and judged["sid beats the teacher's 2-step"]["met"]
    assert judged["ladd beats the teacher's 1-step"]["met"]  # 50 / 60
    assert not judged["ladd beats the teacher's 2-step"]["met"]  # 50 / 50 is not below 1
    assert judged["ladd beats the teacher's 2-step"]["ratio_per_seed"] == pytest.approx([1.1, 0.9])
    assert "dmd2 1-step FD" not in judged  # not measured: left out

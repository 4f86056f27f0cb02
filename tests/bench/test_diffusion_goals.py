"""The students' goals of `jdistill bench diffusion`, judged on a hand-made result: means and every seed, each
goal's direction, the boundary, and goals left out when their student was not measured."""

import pytest

from jdistill.bench.diffusion_goals import format_goals, goals


def entry(fds):
    return {"fd": sum(fds) / len(fds)}, {"fd": list(fds)}


def result(students: dict) -> dict:
    teacher = {"1": [60.0, 60.0], "4": [12.0, 12.0], "35": [1.4, 1.4]}
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

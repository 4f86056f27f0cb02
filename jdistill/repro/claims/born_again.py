"""`born-again` (Furlanello et al. 2018, "Born-Again Neural Networks"): generation k+1 beats generation k for a few
generations, and an ensemble of the generations beats each of them.

One seed: the `born_again` preset (teacher = generation 0, trained on labels; `generations` students, each
distilled from the one before with T^2 KL at T = 4 plus 0.1 CE). Numbers: each generation's test accuracy, the
label-only student's, and the accuracy of the mean softmax of generations 1..K (the paper's BAN ensemble).
Held: every generation beats the one before it (generation 1 beats the teacher) and the ensemble beats every
generation (means over seeds).
"""

from __future__ import annotations

import itertools

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.claims.common import ensemble_accuracy, metric, quick_digits

GENERATIONS = 3


def measure(context: Context) -> dict[str, float]:
    generations = int(context.params["generations"])
    config = context.config("born_again", f"distill.options.generations={generations}")
    summary = context.job(config, "born_again")
    stages = [f"student_born_again_gen{k}" for k in range(1, generations + 1)]
    numbers = {"accuracy_scratch": metric(summary, "student_scratch", "accuracy")}
    numbers["accuracy_gen0"] = metric(summary, "teacher", "accuracy")
    numbers.update({f"accuracy_gen{k}": metric(summary, stage, "accuracy") for k, stage in enumerate(stages, 1)})
    numbers["accuracy_ensemble"] = ensemble_accuracy(context.run_dir / "born_again", stages)
    return numbers


def held(means) -> bool:
    generations = sorted(int(k.removeprefix("accuracy_gen")) for k in means if k.startswith("accuracy_gen"))
    each = [means[f"accuracy_gen{k}"] for k in generations]
    improving = all(later > earlier for earlier, later in itertools.pairwise(each))
    return improving and means["accuracy_ensemble"] > max(each[1:])


CLAIM = Claim(
    name="born-again",
    statement="generation k+1 beats generation k for a few generations; an ensemble of generations beats each",
    paper="Furlanello et al. 2018, Born-Again Neural Networks",
    setting=f"digits, born_again preset (1-block net, T = 4, 0.9 KD + 0.1 CE), {GENERATIONS} generations after "
    "the teacher (generation 0)",
    rule="accuracy rises every generation (gen 1 > teacher) and the ensemble of generations 1..K > every "
    "generation (means over seeds)",
    measure=measure,
    held=held,
    plot=Plot(
        ylabel="test accuracy (fraction)",
        xlabel="model",
        bars=(
            ("accuracy_scratch", "labels only", "labels only"),
            ("accuracy_gen0", "gen 0 (teacher)", "generation"),
            *((f"accuracy_gen{k}", f"gen {k}", "generation") for k in range(1, 6)),
            ("accuracy_ensemble", "ensemble 1..K", "ensemble"),
        ),
    ),
    quick=quick_digits(),
    presets=("born_again",),
    params={"generations": GENERATIONS},
)

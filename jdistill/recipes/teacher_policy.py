"""Teacher policies: where a recipe's teacher comes from, and what the job and the train step do about it
(docs/conventions.md, Teachers).

A recipe names its policy (`recipe.teacher_policy`, the name shown by `jdistill recipes`); `recipe.policy` is
the `TeacherPolicy` below, whose flags the job (which stages to run), the stage builder (which parameters the
step receives) and the step (whether a teacher module runs inside it) read instead of comparing names.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TeacherPolicy:
    """What a teacher policy needs.

    name:            the policy's name (`jdistill recipes`).
    trained_teacher: the job trains a teacher stage on labels first (or loads `teacher.init_from`).
    random_teacher:  the job builds the teacher from `config.teacher` at its random initialisation, never trained.
    cache:           the student reads the teacher's top-k log-probs from disk with its batches, not the teacher.
    module_in_step:  the step builds a teacher module from `recipe.teacher_params(...)` and runs it.
    """

    name: str
    trained_teacher: bool = False
    random_teacher: bool = False
    cache: bool = False
    module_in_step: bool = False

    @property
    def separate_teacher(self) -> bool:
        """The student's step receives the parameters of a separate teacher model (built from `config.teacher`);
        otherwise a teacher module, if any, has the student's graph (EMA, snapshots)."""
        return (self.trained_teacher and not self.cache) or self.random_teacher

    def __str__(self) -> str:
        return self.name


FROZEN = TeacherPolicy("frozen", trained_teacher=True, module_in_step=True)
EMA = TeacherPolicy("ema", module_in_step=True)
PREVIOUS_EPOCH = TeacherPolicy("previous_epoch")
RANDOM_INIT = TeacherPolicy("random_init", random_teacher=True, module_in_step=True)
SNAPSHOTS = TeacherPolicy("snapshots", module_in_step=True)
CACHED_TOPK = TeacherPolicy("cached_topk", trained_teacher=True, cache=True)
SELF = TeacherPolicy("self")
NONE = TeacherPolicy("none")

TEACHER_POLICIES = {
    policy.name: policy for policy in (FROZEN, EMA, PREVIOUS_EPOCH, RANDOM_INIT, SNAPSHOTS, CACHED_TOPK, SELF, NONE)
}


def policy_named(name: str) -> TeacherPolicy:
    """The policy called `name`; a ValueError naming the known ones otherwise."""
    try:
        return TEACHER_POLICIES[name]
    except KeyError:
        raise ValueError(f"teacher_policy {name!r} is not one of {', '.join(TEACHER_POLICIES)}") from None

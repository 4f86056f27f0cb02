"""Training: state, the generic jitted step, optimizer, checkpoints, metrics writers, the stage loop, jobs."""

from jdistill.train.job import run_job, run_teacher_student
from jdistill.train.loop import StageResult, evaluate, run_stage
from jdistill.train.state import TrainState, create_train_state
from jdistill.train.step import make_eval_step, make_train_step

__all__ = [
    "StageResult",
    "TrainState",
    "create_train_state",
    "evaluate",
    "make_eval_step",
    "make_train_step",
    "run_job",
    "run_stage",
    "run_teacher_student",
]

"""Load a trained stage of a run directory back as a model (for analysis and evaluation)."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from jdistill.configs import load_config
from jdistill.errors import RunDirError
from jdistill.models import Transformer
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.optim import make_optimizer
from jdistill.train.state import create_train_state

STAGE_CONFIGS = {"teacher": "teacher", "student_scratch": "student", "student_kd": "student"}


def load_stage(run_dir, stage: str):
    """(model with the stage's newest checkpoint, run Config)."""
    run_dir = Path(run_dir)
    if stage not in STAGE_CONFIGS:
        raise RunDirError(f"--stage {stage}: expected one of {', '.join(STAGE_CONFIGS)}")
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_config(str(run_dir / "config.yaml"))
    stage_config = getattr(config, STAGE_CONFIGS[stage])
    model = Transformer(stage_config.model, rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, make_optimizer(stage_config.train))
    checkpointer = Checkpointer(run_dir / stage / "checkpoints", keep=stage_config.train.keep_checkpoints)
    step = checkpointer.latest_step()
    if step is None:
        raise RunDirError(f"{run_dir / stage}: no checkpoint to load")
    state = checkpointer.restore(step, state)
    checkpointer.close()
    return nnx.merge(graphdef, state.params), config

"""The one-step generators refuse, in one line before training, a teacher run whose checkpoint has no EMA weights."""

import jax.numpy as jnp
import pytest
from flax import nnx

from jdistill.configs import load_config, to_dict
from jdistill.errors import ConfigError
from jdistill.recipes.diffusion_dmd import DiffusionDMD
from jdistill.recipes.registry import build_recipe
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.rundir import write_config
from jdistill.train.state import TrainState

SMALL = ["student.model.num_layers=1", "student.model.d_model=16", "student.model.mlp_dim=32",
         "student.model.num_heads=2", "student.model.patch_size=4"]  # fmt: skip


def test_a_teacher_without_ema_weights_is_a_one_line_error(tmp_path):
    config = load_config("diffusion_edm", SMALL)
    write_config(tmp_path, to_dict(config))
    model = build_recipe(config.distill).wraps_student()(config.student.model, nnx.Rngs(0))
    checkpointer = Checkpointer(tmp_path / "student_diffusion_edm" / "checkpoints", keep=1)
    # a checkpoint with the online weights but a recipe state without "ema"
    checkpointer.save(1, TrainState(jnp.asarray(1, jnp.int32), nnx.state(model, nnx.Param), (), {"x": jnp.zeros(2)}))
    checkpointer.close()
    recipe = DiffusionDMD(teacher_run=str(tmp_path))
    with pytest.raises(ConfigError) as error:
        recipe.check(load_config("diffusion_dmd", [*SMALL, f"distill.options.teacher_run={tmp_path}"]))
    message = str(error.value)
    assert message.startswith(f"distill.options.teacher_run: {tmp_path} has no EMA weights") and "\n" not in message

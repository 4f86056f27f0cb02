"""Diffusion students (one-step generators, consistency students, ...) refuse, in one line before training, a teacher
run whose checkpoint has no EMA weights (`jdistill.diffusion.load.load_denoiser`: orbax would leave the requested
EMA structure unfilled, and the student would start from placeholders)."""

import jax.numpy as jnp
import pytest
from flax import nnx

from jdistill.configs import load_config, to_dict
from jdistill.errors import ConfigError
from jdistill.recipes.registry import build_recipe
from jdistill.train.checkpoint import Checkpointer
from jdistill.train.rundir import write_config
from jdistill.train.state import TrainState

SMALL = ["student.model.num_layers=1", "student.model.d_model=16", "student.model.mlp_dim=32",
         "student.model.num_heads=2", "student.model.patch_size=4"]  # fmt: skip


@pytest.mark.parametrize("preset", ["diffusion_dmd", "diffusion_cd"])
def test_a_teacher_without_ema_weights_is_a_one_line_error(tmp_path, preset):
    config = load_config("diffusion_edm", SMALL)
    write_config(tmp_path, to_dict(config))
    model = build_recipe(config.distill).wraps_student()(config.student.model, nnx.Rngs(0))
    checkpointer = Checkpointer(tmp_path / "student_diffusion_edm" / "checkpoints", keep=1)
    # a checkpoint with the online weights but a recipe state without "ema"
    checkpointer.save(1, TrainState(jnp.asarray(1, jnp.int32), nnx.state(model, nnx.Param), (), {"x": jnp.zeros(2)}))
    checkpointer.close()
    student_config = load_config(preset, [*SMALL, f"distill.options.teacher_run={tmp_path}"])
    with pytest.raises(ConfigError) as error:
        build_recipe(student_config.distill).check(student_config)
    message = str(error.value)
    stage = tmp_path / "student_diffusion_edm"
    assert f"distill.options.teacher_run: {stage}: step 1 has no EMA weights" in message, message
    assert "\n" not in message

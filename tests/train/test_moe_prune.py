"""`student.prune` of a mixture-of-experts teacher: the student stages take the MoE layout of the blocks the prune
kept (which blocks are MoE is known only once block influence has chosen them), not the teacher's."""

import pytest
from flax import nnx

from jdistill.configs import load_config
from jdistill.hf import save_pretrained
from jdistill.hf.init_from import checkpoint_model, merge_model
from jdistill.hf.prune import prune_layers
from jdistill.models import Transformer
from jdistill.train.prune_stage import pruned_stage_config, resolve_prune
from tests.train.llm_tiny import TINY_LLM

MOE_TEACHER = [
    "teacher.model.num_layers=3",
    "teacher.model.num_experts=4",
    "teacher.model.experts_per_token=2",
    "teacher.model.moe_mlp_dim=16",
    "teacher.model.moe_every=2",  # block 1 is the teacher's only MoE block
    "student.prune.layers=2",
]


@pytest.mark.parametrize(("keep", "moe_blocks"), [([0, 2], [False, False]), ([1, 2], [True, False])])
def test_the_pruned_students_moe_layout_is_that_of_the_kept_blocks(tmp_path, keep, moe_blocks):
    config = resolve_prune(load_config("llm_kd", [*TINY_LLM, *MOE_TEACHER]))
    assert config.student.model.moe_every == 2  # derived from the teacher before the prune
    save_pretrained(prune_layers(Transformer(config.teacher.model, rngs=nnx.Rngs(0)), keep), tmp_path)
    student = pruned_stage_config(config, tmp_path)
    saved, source = checkpoint_model(student.init_from, "student")
    model = merge_model(student.model, saved, "student", source)  # a conflicting field would raise ConfigError
    assert [model.is_moe_layer(i) for i in range(2)] == moe_blocks

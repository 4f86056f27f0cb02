"""`student.prune` in a job: the student starts from the job's own teacher, depth-pruned (docs/llm.md).

    config = resolve_prune(config)                        # student.model := the teacher's with prune.layers blocks
    init_dir = prune_teacher(config, teacher, run_dir)    # run_dir/prune.json, run_dir/student_init/ (HF checkpoint)

After the teacher stage, `prune_teacher` keeps `prune.layers` blocks chosen by `prune.method`
(`jdistill.hf.prune.layers_to_keep`; block influence, BI_l = 1 - E[cos(x_l, x_{l+1})], over the first
`prune.calibration_batches` batches of the training stream), prints the scores, writes `run_dir/prune.json` and the
pruned model as a Hugging Face checkpoint `run_dir/student_init/` (with the data tokenizer's files), which the student
stages read through `student.init_from`. Both are written atomically; a resumed job finds `student_init/` and reuses
it, so it continues from the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jdistill.configs.schema import pruned_student_model
from jdistill.errors import ConfigError, UserError
from jdistill.train.distributed import barrier
from jdistill.train.writers import write_json_atomic

INIT_DIR = "student_init"
RECORD = "prune.json"


def resolve_prune(config: Any) -> Any:
    """`config` with `student.model` derived from the teacher (`pruned_student_model`) when `student.prune` is set,
    after checking (before any compute) that the pruned teacher can be written as an HF checkpoint and read back
    with the same architecture."""
    if config.student.prune.layers is None:
        return config
    model, problems = pruned_student_model(config)
    for key, expected in problems:
        raise ConfigError(f"{key} expected {expected}")
    from jdistill.hf.config import hf_config_from_model, model_config_from_hf
    from jdistill.hf.init_from import RUNTIME_FIELDS

    try:
        saved = model_config_from_hf(hf_config_from_model(model), source="the pruned teacher's config.json")
    except UserError as error:
        raise ConfigError(f"student.prune: the pruned teacher is saved as an HF checkpoint, and {error}") from None
    for field in dataclasses.fields(model):
        mine, read_back = getattr(model, field.name), getattr(saved, field.name)
        if field.name not in (*RUNTIME_FIELDS, "max_seq_len") and mine != read_back:
            raise ConfigError(
                f"teacher.model.{field.name}: {mine!r} cannot be held by the HF checkpoint student.prune writes "
                f"(it reads back as {read_back!r}); set it to {read_back!r}"
            )
    return dataclasses.replace(config, student=dataclasses.replace(config.student, model=model))


def calibration_batches(config: Any) -> list[dict]:
    """The first `prune.calibration_batches` batches of the training stream (packed windows, the seed's order)."""
    from jdistill.train import inputs

    dataset = inputs.train_dataset(config.data, config.teacher.model, config.student.train, config.seed)
    return [dataset[step] for step in range(config.student.prune.calibration_batches)]


def pruned_teacher(config: Any, teacher_model) -> tuple[Any, dict]:
    """(the pruned model, the record written to prune.json) for the teacher `teacher_model`."""
    from jdistill.hf.prune import block_influence, layers_to_keep, prune_layers

    prune = config.student.prune
    num_layers = teacher_model.config.num_layers
    scores = None
    if prune.method == "block_influence":
        scores = block_influence(teacher_model, calibration_batches(config))
    keep = layers_to_keep(prune.method, num_layers, prune.layers, scores)
    record = {
        "method": prune.method,
        "teacher_layers": num_layers,
        "layers": prune.layers,
        "keep": keep,
        "calibration_batches": prune.calibration_batches if scores is not None else 0,
        "block_influence": None if scores is None else [float(score) for score in scores],
    }
    return prune_layers(teacher_model, keep), record


def prune_teacher(config: Any, teacher, run_dir: Path) -> Path:
    """Prune the trained (or loaded) `teacher` StageResult into `run_dir/student_init/` (kept when it exists)."""
    from jdistill.hf.export import save_with_tokenizer
    from jdistill.hf.prune import format_scores

    out = Path(run_dir) / INIT_DIR
    if (out / "config.json").is_file():
        return out  # a resumed job: the same weights as before the interruption
    model, record = pruned_teacher(config, nnx.merge(teacher.graphdef, teacher.params))
    if jax.process_index() == 0:
        if record["block_influence"] is not None:
            import numpy as np

            print(format_scores(np.asarray(record["block_influence"]), record["keep"]))
        print(f"student.prune: kept teacher blocks {record['keep']} of {record['teacher_layers']} ({record['method']})")
        write_json_atomic(Path(run_dir) / RECORD, record)
        save_with_tokenizer(model, out, config.data.tokenizer)
    barrier("student_init")
    return out


# Which blocks of a mixture-of-experts teacher are MoE follows from the blocks the prune keeps (known only after
# block influence is scored): the pruned checkpoint's MoE fields (`jdistill.hf.prune.prune_layers` rebuilds
# `dense_layers`; a prune that keeps no MoE block is a dense model) replace those `resolve_prune` derived from the
# teacher.
MOE_LAYOUT_FIELDS = (
    "num_experts",
    "experts_per_token",
    "moe_mlp_dim",
    "shared_expert_dim",
    "norm_topk_prob",
    "moe_every",
    "dense_layers",
)


def pruned_stage_config(config: Any, init_dir: Path):
    """The student stage config that starts from the pruned teacher (its MoE layout that of the saved blocks)."""
    from jdistill.hf.init_from import checkpoint_model

    spec = f"hf:{init_dir}"
    saved, _ = checkpoint_model(spec, "student")
    layout = {name: getattr(saved, name) for name in MOE_LAYOUT_FIELDS}
    return dataclasses.replace(
        config.student, init_from=spec, model=dataclasses.replace(config.student.model, **layout)
    )

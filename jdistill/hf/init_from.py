"""`teacher.init_from` / `student.init_from`: a stage that starts from saved weights ("hf:DIR", a Hugging Face
checkpoint folder, or RUN_DIR/STAGE, a stage of an earlier run).

The model's architecture is the checkpoint's: `resolve_init_from(config)` replaces the stage's `model` by the
checkpoint's model config, keeping from the config only how the model runs (`RUNTIME_FIELDS`: dtype,
rematerialisation, kernels, the MoE dispatch, and for LMs `max_seq_len`). A field the config sets to something
other than both its default and the checkpoint's value is a one-line error naming it; a field left at its default
takes the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jdistill.errors import ConfigError, UserError
from jdistill.hf.config import HFImportError, model_config_from_hf
from jdistill.hf.files import hf_dir, read_json
from jdistill.models import Transformer
from jdistill.models.config import ModelConfig

ROLES = ("teacher", "student")
RUNTIME_FIELDS = ("dtype", "remat", "attention_impl", "delta_rule_impl", "moe_dispatch")


def checkpoint_model(spec: str, role: str) -> tuple[ModelConfig, str]:
    """(the model config saved with checkpoint `spec`, the file it was read from)."""
    what = f"{role}.init_from"
    if spec.startswith("hf:"):
        directory = hf_dir(spec, what)
        source = str(directory / "config.json")
        try:
            return model_config_from_hf(read_json(Path(source)), source=source), source
        except HFImportError as error:
            raise HFImportError(f"{what}: {error}") from None
    stage_dir = Path(spec)
    if not (stage_dir / "checkpoints").is_dir() or not (stage_dir.parent / "config.yaml").is_file():
        raise ConfigError(f"{what}: {spec} is neither hf:DIR nor a run's stage folder (RUN_DIR/STAGE)")
    from jdistill.configs import load_config
    from jdistill.train.restore import stage_config_for

    run_config = stage_dir.parent / "config.yaml"
    try:
        stage_config = stage_config_for(load_config(str(run_config)), stage_dir.name)
    except UserError as error:
        raise ConfigError(f"{what}: {error}") from None
    return stage_config.model, str(run_config)


def check_init_weights(spec: str, model_config: ModelConfig, role: str) -> None:
    """The safetensors of `hf:DIR` hold every tensor of `model_config` with its shape (headers only)."""
    from jdistill.hf.checkpoint import check_weights

    try:
        check_weights(model_config, hf_dir(spec, f"{role}.init_from"))
    except HFImportError as error:
        raise HFImportError(f"{role}.init_from: {error}") from None


def merge_model(config_model: ModelConfig, saved: ModelConfig, role: str, source: str) -> ModelConfig:
    """The checkpoint's architecture with the config's runtime fields; a conflicting field is a ConfigError."""
    runtime = RUNTIME_FIELDS + (("max_seq_len",) if saved.kind == "lm" else ())  # no LM parameter depends on it
    default = ModelConfig()
    for field in dataclasses.fields(ModelConfig):
        mine, theirs = getattr(config_model, field.name), getattr(saved, field.name)
        if field.name not in runtime and mine != theirs and mine != getattr(default, field.name):
            raise ConfigError(
                f"{role}.model.{field.name}: {mine!r} in the config but {theirs!r} in {source} "
                f"({role}.init_from; leave it unset to take the checkpoint's)"
            )
    return dataclasses.replace(saved, **{name: getattr(config_model, name) for name in runtime})


def resolve_init_from(config: Any) -> Any:
    """`config` with the model of every stage that has `init_from` read from its checkpoint (then re-validated)."""
    changes = {}
    for role in ROLES:
        stage = getattr(config, role)
        if stage.init_from:
            saved, source = checkpoint_model(stage.init_from, role)
            if stage.init_from.startswith("hf:"):
                check_init_weights(stage.init_from, saved, role)  # damaged weights found before any stage
            changes[role] = dataclasses.replace(stage, model=merge_model(stage.model, saved, role, source))
    if not changes:
        return config
    resolved = dataclasses.replace(config, **changes)
    problems = [
        (f"{role}.model.{field}", expected) for role in changes for field, expected in changes[role].model.validate()
    ]
    problems += resolved.validate()
    for key, expected in problems:
        raise ConfigError(f"{key} expected {expected} (after reading init_from), got {_lookup(resolved, key)!r}")
    return resolved


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def load_init_model(stage_config: Any, role: str, layout: tuple[Mesh, dict | None] | None = None) -> Transformer:
    """A Transformer of the stage's (resolved) model with the weights of its `init_from`; `layout` (mesh, mesh
    rules): an "hf:DIR" checkpoint is read straight into that sharded layout (`jdistill.hf.from_pretrained`)."""
    saved, source = checkpoint_model(stage_config.init_from, role)
    model_config = merge_model(stage_config.model, saved, role, source)
    if stage_config.init_from.startswith("hf:"):
        from jdistill.hf.checkpoint import load_weights, model_shardings

        model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))  # every weight is read
        shardings = None if layout is None else model_shardings(model, *layout)
        try:
            load_weights(model, hf_dir(stage_config.init_from, f"{role}.init_from"), shardings)
        except HFImportError as error:
            raise HFImportError(f"{role}.init_from: {error}") from None
        return model
    from jdistill.train.restore import load_stage_params

    return nnx.merge(*load_stage_params(Path(stage_config.init_from), model_config))


def initialise_student(student: nnx.Module, stage_config: Any) -> None:
    """Overwrite the student's transformer (the module itself, or a recipe wrapper's `model`) with the weights of
    `student.init_from`; extra modules of a wrapper (e.g. feature projections) keep their initialisation."""
    transformer = student if isinstance(student, Transformer) else getattr(student, "model", None)
    if not isinstance(transformer, Transformer):
        raise ConfigError(
            f"student.init_from: this recipe trains a {type(student).__name__}, not one transformer; "
            "it cannot start from a checkpoint"
        )
    nnx.update(transformer, nnx.state(load_init_model(stage_config, "student")))

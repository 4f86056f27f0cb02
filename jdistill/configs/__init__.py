"""Configuration: YAML presets in this folder, `key.sub=value` overrides, frozen dataclasses."""

from jdistill.configs.parsing import load_config as _load_config
from jdistill.configs.parsing import preset_names, to_dict
from jdistill.configs.schema import (
    ClusterConfig,
    Config,
    DataConfig,
    DistillConfig,
    MeshConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
)


def load_config(name_or_path: str | None = "default", overrides=()) -> Config:
    """Load a preset name or YAML path, apply `key.sub=value` overrides, validate into `Config`."""
    return _load_config(Config, name_or_path, list(overrides))


__all__ = [
    "ClusterConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "MeshConfig",
    "RunConfig",
    "StageConfig",
    "TrainConfig",
    "load_config",
    "preset_names",
    "to_dict",
]

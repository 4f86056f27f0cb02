"""Model configs, the gated transformer, and what models return."""

from jdistill.models.config import ModelConfig
from jdistill.models.outputs import ModelOutput
from jdistill.models.transformer import Transformer, count_params

__all__ = ["ModelConfig", "ModelOutput", "Transformer", "count_params"]

"""Hugging Face interop: local safetensors checkpoints of Llama, Qwen3, Qwen3-MoE and Qwen3-Next decoders in and
out (docs/checkpoints.md, docs/moe.md), depth pruning (`jdistill prune`) and export of trained stages (`jdistill
export`). The names below are imported on first use, so the command line's argument parsing stays fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jdistill.hf.checkpoint import from_pretrained, save_pretrained
    from jdistill.hf.config import SUPPORTED, HFImportError

_EXPORTS = {
    "from_pretrained": "jdistill.hf.checkpoint",
    "save_pretrained": "jdistill.hf.checkpoint",
    "SUPPORTED": "jdistill.hf.config",
    "HFImportError": "jdistill.hf.config",
}
__all__ = ["SUPPORTED", "HFImportError", "from_pretrained", "save_pretrained"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jdistill.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

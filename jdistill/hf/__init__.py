"""Hugging Face interop: local safetensors checkpoints of Llama and Qwen3 decoders in and out."""

from jdistill.hf.checkpoint import from_pretrained, save_pretrained
from jdistill.hf.config import SUPPORTED, HFImportError

__all__ = ["SUPPORTED", "HFImportError", "from_pretrained", "save_pretrained"]

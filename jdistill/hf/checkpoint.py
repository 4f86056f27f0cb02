"""`from_pretrained` / `save_pretrained`: local Hugging Face checkpoints (config.json + safetensors, sharded or
not) <-> jdistill Transformers. Only safetensors are read or written: no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jdistill.hf.config import HFImportError, hf_config_from_model, model_config_from_hf
from jdistill.hf.weights import dump_tensors, load_tensors, tensor_mappings
from jdistill.models import Transformer
from jdistill.models.config import DType

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HFImportError(f"{path}: no such file (expected a Hugging Face checkpoint directory)") from None
    except json.JSONDecodeError as error:
        raise HFImportError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the sharded index or the single file."""
    if (directory / INDEX_FILE).is_file():
        weight_map = _read_json(directory / INDEX_FILE).get("weight_map", {})
        return {name: directory / file for name, file in weight_map.items()}
    if not (directory / SINGLE_FILE).is_file():
        raise HFImportError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with safe_open(directory / SINGLE_FILE, framework="np") as f:
        return {name: directory / SINGLE_FILE for name in f.keys()}  # noqa: SIM118 - safe_open is not a dict


def read_tensors(directory: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The named tensors (bf16 arrives as ml_dtypes.bfloat16); a missing one is a one-line error."""
    files = _tensor_files(directory)
    missing = [name for name in names if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HFImportError(f"{directory}: missing tensor {missing[0]}{more}")
    tensors = {}
    for file in sorted(set(files[name] for name in names)):
        with safe_open(file, framework="np") as f:
            for name in names:
                if files[name] == file:
                    tensors[name] = f.get_tensor(name)
    return tensors


def from_pretrained(path: str | os.PathLike, *, dtype: DType = "float32") -> Transformer:
    """A jdistill decoder LM with the weights of a local `LlamaForCausalLM` / `Qwen3ForCausalLM` checkpoint.

    `dtype` is the compute dtype; parameters are kept in float32. `model(input_ids).logits` matches
    transformers' logits (float32: max abs difference <= 1e-4 in the tests).
    """
    directory = Path(path)
    config = model_config_from_hf(
        _read_json(directory / "config.json"), dtype=dtype, source=str(directory / "config.json")
    )
    model = Transformer(config, rngs=nnx.Rngs(0))
    load_weights(model, directory)
    return model


def load_weights(model: Transformer, path: str | os.PathLike) -> None:
    """Overwrite `model`'s parameters with the checkpoint's (its config must describe the same architecture)."""
    directory = Path(path)
    mappings = tensor_mappings(model.config)
    tensors = read_tensors(directory, [m.hf_name for m in mappings])
    try:
        load_tensors(model, tensors, mappings)
    except ValueError as error:
        raise HFImportError(f"{directory}: {error}") from None


def save_pretrained(model: Transformer, path: str | os.PathLike, *, extra_config: dict | None = None) -> None:
    """Write `config.json` and `model.safetensors` that transformers (and `from_pretrained`) load back.

    `extra_config`: more `config.json` keys (e.g. `eos_token_id`); those describing the model win over them.
    Files are written to temporary names and renamed, so an interrupted save never leaves a half checkpoint.
    """
    bias = model.head.bias if hasattr(model, "head") else None
    if bias is not None and np.any(np.asarray(bias[...]) != 0):
        raise HFImportError(
            "save_pretrained: the output head has a nonzero bias, which Llama / Qwen3 checkpoints cannot hold "
            "(train with model.head_bias=false, as models read from Hugging Face checkpoints are)"
        )
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dump_tensors(model, tensor_mappings(model.config))
    save_file(tensors, str(directory / (SINGLE_FILE + ".tmp")), metadata={"format": "pt"})
    config = {**(extra_config or {}), **hf_config_from_model(model.config)}
    (directory / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(directory / (SINGLE_FILE + ".tmp"), directory / SINGLE_FILE)
    os.replace(directory / "config.json.tmp", directory / "config.json")

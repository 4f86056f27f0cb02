"""`from_pretrained` / `save_pretrained`: local Hugging Face checkpoints (config.json + safetensors, sharded or
not) <-> jdistill Transformers. Only safetensors are read or written: no pickle anywhere."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, Sharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jdistill.hf.config import HFImportError, hf_config_from_model, model_config_from_hf
from jdistill.hf.files import read_json
from jdistill.hf.moe_layout import PACKED, expert_layout, packed_part, packed_shapes
from jdistill.hf.weights import dump_tensors, expected_hf_shapes, load_tensors, tensor_mappings
from jdistill.models import Transformer
from jdistill.models.config import DType, ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@contextlib.contextmanager
def _open(file: Path, listed_in: str | None = None) -> Iterator[Any]:
    """`safe_open(file)`; a missing, empty, truncated or foreign file is a one-line HFImportError."""
    if not file.is_file():
        where = f" (listed in {listed_in})" if listed_in else ""
        raise HFImportError(f"{file}: no such file{where}; the checkpoint is incomplete")
    try:
        handle = safe_open(file, framework="np")
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HFImportError(
            f"{file}: not a readable safetensors file ({reason}); it may be truncated or damaged: download it again"
        ) from None
    with handle as f:
        yield f


def _index(directory: Path) -> dict[str, Path]:
    """Tensor name -> shard file of the sharded index; a malformed index or a shard outside the folder is an error."""
    path = directory / INDEX_FILE
    weight_map = read_json(path)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise HFImportError(f'{path}: expected an object with a non-empty "weight_map" of tensor name -> file')
    files = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
            raise HFImportError(f"{path}: weight_map[{name!r}]: expected a file name in the folder, got {file!r:.60}")
        files[name] = directory / file
    return files


def _tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the sharded index or the single file."""
    if (directory / INDEX_FILE).is_file():
        return _index(directory)
    if not (directory / SINGLE_FILE).is_file():
        raise HFImportError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with _open(directory / SINGLE_FILE) as f:
        return {name: directory / SINGLE_FILE for name in f.keys()}  # noqa: SIM118 - safe_open is not a dict


def _files_of(directory: Path, names: list[str]) -> dict[str, Path]:
    files = _tensor_files(directory)
    missing = [name for name in names if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HFImportError(f"{directory}: missing tensor {missing[0]}{more}")
    return files


def _each_tensor(directory: Path, names: list[str], read: Callable[[Any, str], Any]) -> dict[str, Any]:
    """{name: read(open file, name)} over the files holding `names`; damaged files are one-line errors."""
    files = _files_of(directory, names)
    listed_in = str(directory / INDEX_FILE) if (directory / INDEX_FILE).is_file() else None
    out = {}
    for file in sorted(set(files[name] for name in names)):
        with _open(file, listed_in) as f:
            present = set(f.keys())
            for name in names:
                if files[name] != file:
                    continue
                if name not in present:
                    raise HFImportError(f"{file}: tensor {name} is listed in {INDEX_FILE} but not in the file")
                try:
                    out[name] = read(f, name)
                except (SafetensorError, ValueError, OSError) as error:
                    raise HFImportError(f"{file}: tensor {name} cannot be read ({error})") from None
    return out


def _tensor_reader(directory: Path, config: ModelConfig, names: list[str], packed: bool) -> Callable[[str], np.ndarray]:
    """name -> that tensor, read from its file when asked (one tensor in host memory at a time). In a packed
    checkpoint an expert's released tensor is read as its slice of the packed one (only that expert's rows)."""
    files = _files_of(directory, names)
    listed_in = str(directory / INDEX_FILE) if (directory / INDEX_FILE).is_file() else None

    def read(name: str) -> np.ndarray:
        part = packed_part(config, name) if packed else None
        stored = name if part is None else part[0]
        with _open(files[stored], listed_in) as f:
            try:
                if part is None:
                    return f.get_tensor(stored)
                _, expert, rows = part
                return f.get_slice(stored)[expert : expert + 1][0][rows]
            except (SafetensorError, ValueError, OSError) as error:
                raise HFImportError(f"{files[stored]}: tensor {stored} cannot be read ({error})") from None

    return read


def _expected_shapes(model_config: ModelConfig, directory: Path) -> tuple[dict[str, tuple[int, ...]], bool]:
    """(tensor name -> shape the config needs, whether the experts are in transformers' packed layout)."""
    expected = expected_hf_shapes(model_config)
    if not model_config.num_experts:
        return expected, False
    packed = expert_layout(model_config, set(_tensor_files(directory)), str(directory)) == PACKED
    return (packed_shapes(model_config, expected) if packed else expected), packed


def check_weights(model_config: ModelConfig, path: str | os.PathLike) -> None:
    """Every tensor `model_config` needs is in the checkpoint with its shape, read from the safetensors headers
    only (no tensor data): damage is found before any stage starts."""
    directory = Path(path)
    expected, _ = _expected_shapes(model_config, directory)
    shapes = _each_tensor(directory, list(expected), lambda f, name: tuple(f.get_slice(name).get_shape()))
    files = _files_of(directory, list(expected))
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise HFImportError(
                f"{files[name]}: {name}: shape {shapes[name]} does not match the config ({shape} by config.json)"
            )


def from_pretrained(
    path: str | os.PathLike, *, dtype: DType = "float32", mesh: Mesh | None = None, rules: dict | None = None
) -> Transformer:
    """A jdistill decoder LM with the weights of a local `LlamaForCausalLM` / `Qwen3ForCausalLM` /
    `Qwen3MoeForCausalLM` / `Qwen3NextForCausalLM` checkpoint (MoE experts in the released per-expert layout or
    transformers' packed one, docs/moe.md).

    `dtype` is the compute dtype; parameters are kept in float32. `model(input_ids).logits` matches
    transformers' logits (float32: max abs difference <= 1e-4 in the tests). `mesh` (a `jax.sharding.Mesh` with
    jdistill's axes, `jdistill.train.sharding.make_mesh`) and `rules` (logical -> mesh axes; default the
    library's): every parameter is loaded straight into its sharded layout, each process reading only what its
    devices hold (docs/scaling_out.md, "Loading a large checkpoint").
    """
    directory = Path(path)
    config = model_config_from_hf(
        read_json(directory / "config.json"), dtype=dtype, source=str(directory / "config.json")
    )
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))  # shapes only: every weight is read
    load_weights(model, directory, shardings=None if mesh is None else model_shardings(model, mesh, rules))
    return model


def model_shardings(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> dict[tuple, Sharding]:
    """parameter path -> its NamedSharding on `mesh` by the parameter's logical axes and `rules`."""
    from jdistill.train.sharding import param_shardings, resolve_rules

    specs = param_shardings(nnx.state(model, nnx.Param), mesh, resolve_rules(rules))
    return {tuple(path): variable.get_value() for path, variable in nnx.to_flat_state(specs)}


def load_weights(model: Transformer, path: str | os.PathLike, shardings: dict[tuple, Sharding] | None = None) -> None:
    """Overwrite `model`'s parameters with the checkpoint's (its config must describe the same architecture), one
    parameter at a time; `shardings` (`model_shardings`): build each parameter in that sharding
    (`jdistill.hf.weights.load_tensors`)."""
    directory = Path(path)
    check_weights(model.config, directory)  # names, shapes and readable files, before any data is read
    mappings = tensor_mappings(model.config)
    expected, packed = _expected_shapes(model.config, directory)
    read = _tensor_reader(directory, model.config, list(expected), packed)
    try:
        load_tensors(model, read, mappings, shardings)
    except ValueError as error:
        raise HFImportError(f"{directory}: {error}") from None
    unread = [leaf for leaf in jax.tree.leaves(nnx.state(model)) if isinstance(leaf, jax.ShapeDtypeStruct)]
    assert not unread, f"{len(unread)} parameters of an abstract model have no checkpoint tensor"


def save_pretrained(model: Transformer, path: str | os.PathLike, *, extra_config: dict | None = None) -> None:
    """Write `config.json` and `model.safetensors` that transformers (and `from_pretrained`) load back (MoE
    experts in the released per-expert layout).

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

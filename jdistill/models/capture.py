"""Capture intermediate outputs by layer path, without editing the model (for feature distillation).

    with capture(model, ["blocks.0.mlp", "blocks.1.attention"]) as features:
        output = model(inputs)
    features["blocks.0.mlp"]   # that submodule's output in this forward pass

Works inside `jax.jit` / `nnx.merge`d models: the submodules at the given paths are given, for the duration of the
context only, a subclass whose `__call__` records its result; their parameters and the graph are untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
from flax import nnx

_RECORDERS: dict[type, type] = {}


def resolve(model: nnx.Module, path: str) -> nnx.Module:
    """`"blocks.0.mlp"` -> model.blocks[0].mlp; a clear error names the part that does not exist."""
    node: Any = model
    for part in path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise ValueError(f"layer path {path!r}: {type(node).__name__} has no {part!r}") from None
    if not isinstance(node, nnx.Module):
        raise ValueError(f"layer path {path!r} names a {type(node).__name__}, not a module")
    return node


def _recorder_class(cls: type) -> type:
    if cls not in _RECORDERS:

        def __call__(self, *args, **kwargs):
            result = cls.__call__(self, *args, **kwargs)
            self._capture_sink[self._capture_path] = result
            return result

        _RECORDERS[cls] = type(f"Capturing{cls.__name__}", (cls,), {"__call__": __call__})
    return _RECORDERS[cls]


class Captured(dict):
    """`{path: output}`; reading a path that recorded nothing says why instead of a bare KeyError."""

    def __missing__(self, path):
        raise KeyError(
            f"layer path {path!r} recorded nothing: that module was not called in the forward pass "
            "(the dense MLP and attention projections run fused through jdistill.nn.mlp_core, so capture "
            "their parent, e.g. 'blocks.0.mlp' or 'blocks.0.attention')"
        )


jax.tree_util.register_pytree_node(  # a pytree like a dict, so captured features can leave a jitted function
    Captured,
    lambda captured: (tuple(captured.values()), tuple(captured)),
    lambda paths, values: Captured(zip(paths, values, strict=True)),
)


@contextlib.contextmanager
def capture(model: nnx.Module, paths):
    """Yield a dict filled with `{path: output}` for every forward pass of `model` inside the context."""
    features = Captured()
    modules = [(path, resolve(model, path)) for path in paths]
    originals = []
    try:
        for path, module in modules:
            originals.append((module, module.__class__))
            object.__setattr__(module, "_capture_sink", features)
            object.__setattr__(module, "_capture_path", path)
            object.__setattr__(module, "__class__", _recorder_class(module.__class__))  # also on merged modules
        yield features
    finally:
        for module, cls in originals:
            object.__setattr__(module, "__class__", cls)
            for name in ("_capture_sink", "_capture_path"):
                if name in vars(module):
                    object.__delattr__(module, name)

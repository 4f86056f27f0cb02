"""A stage's evaluation: summed prediction statistics over the evaluation batches, and the recipe's extras."""

from __future__ import annotations

import jax
from flax import nnx

from jdistill.errors import DataError
from jdistill.eval.metrics import add_stats, summarize


def evaluate(eval_step, params, batches, *, kind: str) -> dict:
    """Accuracy / NLL / ECE (bits per byte for LMs) of `params` over `batches`."""
    total = None
    for batch in batches:
        total = add_stats(total, jax.device_get(eval_step(params, batch)))
    if total is None:
        raise DataError("evaluation got no batches: the evaluation split is empty")
    return summarize(total, bits_per_byte=kind == "lm")


def final_metrics(metrics: dict, recipe, graphdef, params, eval_batches, rng) -> dict:
    """The stage's last evaluation plus the recipe's own end-of-stage metrics (probes, robust accuracy ...)."""
    return dict(metrics, **recipe.extra_metrics(nnx.merge(graphdef, params), eval_batches, rng))

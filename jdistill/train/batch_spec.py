"""The abstract training batch of a config's input pipeline: the `jax.ShapeDtypeStruct` dict that the train step
receives, without reading the data. `jdistill compile` compiles the step for it; a test checks it equals the
pipeline's real first batch (fields, shapes and dtypes), so what compiles is what trains.

    classifier: inputs float32 [batch, image_size, image_size, num_channels], labels int32 [batch],
                index int32 [batch]                                              (`jdistill.data.pipeline`)
    lm:         inputs, targets, segment_ids, positions int32 [batch, seq_len], mask bool [batch, seq_len]
                                                                                   (`jdistill.data.packing`)
    lm, recipes with `batch_layout = "prompt_completion"`: prompt int32 / prompt_mask bool [batch, P], completion
                int32 / completion_mask bool [batch, seq_len - P]                  (`jdistill.data.prompts`)

plus the fields the recipe's data adds (`recipe.batch_fields`, e.g. the cached teacher top-k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdistill.errors import ConfigError


def pipeline_batch(
    data_config, model_config, batch_size: int, layout: str = "packed"
) -> dict[str, jax.ShapeDtypeStruct]:
    """The fields the input pipeline itself produces for a global batch of `batch_size`."""
    if model_config.kind == "lm" and layout == "prompt_completion":
        prompt, completion = (
            (batch_size, data_config.prompt_len),
            (batch_size, data_config.seq_len - data_config.prompt_len),
        )
        return {
            "prompt": jax.ShapeDtypeStruct(prompt, jnp.int32),
            "prompt_mask": jax.ShapeDtypeStruct(prompt, jnp.bool_),
            "completion": jax.ShapeDtypeStruct(completion, jnp.int32),
            "completion_mask": jax.ShapeDtypeStruct(completion, jnp.bool_),
        }
    if model_config.kind == "lm":
        shape = (batch_size, data_config.seq_len)
        tokens = {key: jax.ShapeDtypeStruct(shape, jnp.int32) for key in ("inputs", "targets")}
        packing = {key: jax.ShapeDtypeStruct(shape, jnp.int32) for key in ("segment_ids", "positions")}
        return dict(tokens, mask=jax.ShapeDtypeStruct(shape, jnp.bool_), **packing)
    if model_config.classifier_input != "patches":
        raise ConfigError("model.classifier_input: the training pipeline feeds classifiers images; set patches")
    size = model_config.image_size
    return {
        "inputs": jax.ShapeDtypeStruct((batch_size, size, size, model_config.num_channels), jnp.float32),
        "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }


def abstract_batch(data_config, stage_config, recipe) -> dict[str, jax.ShapeDtypeStruct]:
    """The train step's batch argument for a stage trained with `recipe` (the global batch)."""
    batch = pipeline_batch(data_config, stage_config.model, stage_config.train.batch_size, recipe.batch_layout)
    return dict(batch, **recipe.batch_fields(batch))

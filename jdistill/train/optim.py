"""Optimizer: AdamW (decoupled weight decay, not on norms or biases) with linear warm-up then cosine decay."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jdistill.configs.schema import TrainConfig


def learning_rate_schedule(train_config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, cosine decay to
    `final_lr_fraction * learning_rate` at `steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.learning_rate,
        warmup_steps=train_config.warmup_steps,
        decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
        end_value=train_config.learning_rate * train_config.final_lr_fraction,
    )


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (ndim >= 2): not on biases, norm scales or scalars."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate_schedule(train_config),
        b1=train_config.b1,
        b2=train_config.b2,
        weight_decay=train_config.weight_decay,
        mask=_decay_mask,
    )
    if train_config.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), adamw)

"""The batch layout every consumer reads (the data pipelines write it; recipes, the train step and evaluation read it).

Batches are dicts: classifiers carry `inputs`, `labels [batch]` and `index [batch]` (the example's position in the
training split); LMs carry `inputs`, `targets [batch, seq]`, `mask [batch, seq]` and, when packed, `segment_ids`
and `positions [batch, seq]` (`jdistill.data.packing`; models take them through `lm_kwargs`). Every training
batch also has `epoch` (float: the step's position in passes over the training split).

It lives in `jdistill.eval` rather than `jdistill.data` because the readers are the scoring code (train step,
evaluation, recipes' losses), all of which already depend on `jdistill.eval`, while importing `jdistill.data` pulls
in the input pipelines (grain, several seconds); nothing below `jdistill.recipes` may import from it.
"""

from __future__ import annotations


def targets_and_mask(batch: dict):
    """(integer targets, mask or None) for either batch layout: LM `targets`, else classifier `labels`."""
    if "targets" in batch:
        return batch["targets"], batch.get("mask")
    return batch["labels"], batch.get("mask")


LM_KWARGS = ("segment_ids", "positions")


def lm_kwargs(batch: dict) -> dict:
    """The packing fields of an LM batch as model keyword arguments: `model(batch["inputs"], **lm_kwargs(batch))`.

    Only the keys present (`segment_ids` keeps attention inside each packed document, `positions` restarts RoPE at
    every document); empty for classifier batches and hand-made LM batches without them."""
    return {key: batch[key] for key in LM_KWARGS if key in batch}

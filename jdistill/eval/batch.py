"""The batch layout every consumer reads (the data pipelines write it; recipes, the train step and evaluation read it).

Batches are dicts: classifiers carry `inputs`, `labels [batch]` and `index [batch]` (the example's position in the
training split); LMs carry `inputs`, `targets [batch, seq]` and `mask [batch, seq]`. Every training batch also has
`epoch` (float: the step's position in passes over the training split).

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

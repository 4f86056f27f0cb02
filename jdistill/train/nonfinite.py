"""Halting on non-finite training: a stage whose loss or global gradient norm stops being finite is halted
with one line naming the stage, the step, the metric and the last good checkpoint, instead of training on
NaN to the end.

The jitted step (`jdistill.train.step`) reports `finite` and leaves the state unchanged on a bad step, so every
checkpoint holds finite parameters. `train.skip_nonfinite_steps = N` lets a stage skip up to N such steps
(counted as `skipped_steps` in the train metrics and kept across a resume) and halts at the N + 1-th.

Each step's flag is read one step late (after the next step is dispatched), so the host never waits for the
device more than it already does; `flush()` reads everything, before a checkpoint or a log line.
"""

from __future__ import annotations

import jax
import numpy as np

from jdistill.errors import NonFiniteError


class NonFiniteGuard:
    """Counts non-finite steps of one stage; raises `NonFiniteError` past `allowed` of them.

    `last_good() -> (step, path) | None` names the newest saved checkpoint for the message.
    """

    def __init__(self, stage: str, allowed: int, last_good, skipped: int = 0):
        self.stage = stage
        self.allowed = allowed
        self.last_good = last_good
        self.skipped = skipped
        self._pending: list[tuple[int, dict]] = []

    def push(self, step: int, metrics: dict) -> None:
        """Record `step`'s metrics; check every earlier pending step."""
        self._pending.append((step, metrics))
        self._resolve(len(self._pending) - 1)

    def flush(self) -> None:
        """Check every pending step (the device finishes them first)."""
        self._resolve(len(self._pending))

    def _resolve(self, count: int) -> None:
        done, self._pending = self._pending[:count], self._pending[count:]
        for step, metrics in done:
            if bool(jax.device_get(metrics["finite"])):
                continue
            self.skipped += 1
            if self.skipped > self.allowed:
                self._pending = []
                raise NonFiniteError(self.message(step, metrics))

    def message(self, step: int, metrics: dict) -> str:
        network = _diverged_network(metrics)
        if network is not None:  # a recipe's second network (e.g. DMD's fake score) diverged, not the student
            good = self.last_good()
            where = (
                f"step {good[0]} at {good[1]}" if good is not None else "none yet (the stage starts again at step 0)"
            )
            loss = float(jax.device_get(metrics[f"{network}_loss"]))
            return (
                f"{self.stage}: the second network {network!r} diverged (non-finite {network}_loss = {loss}) at "
                f"step {step}; training halted; last good checkpoint: {where}; lower that network's learning rate"
            )
        loss, grad_norm = (float(jax.device_get(metrics[name])) for name in ("loss", "grad_norm"))
        metric = f"loss = {loss}" if loss != loss or abs(loss) == float("inf") else f"grad_norm = {grad_norm}"
        good = self.last_good()
        where = f"step {good[0]} at {good[1]}" if good is not None else "none yet (the stage starts again at step 0)"
        skipped = f" after skipping {self.allowed} such steps" if self.allowed else ""
        return (
            f"{self.stage}: non-finite {metric} at step {step}{skipped}; training halted; last good checkpoint: "
            f"{where}; lower train.learning_rate or allow train.skip_nonfinite_steps"
        )


def _diverged_network(metrics: dict) -> str | None:
    """The name of a second network whose `finite_<name>` flag is false in `metrics` (`jdistill.train.step`)."""
    for key, value in metrics.items():
        if key.startswith("finite_") and not bool(jax.device_get(value)):
            return key[len("finite_") :]
    return None


def finite_window_means(window: list[dict]) -> dict:
    """The mean of each metric over the window's finite steps (a skipped step's values are not averaged in);
    {} when every step was skipped. The `finite` flag itself is dropped."""
    host = [m for m in jax.device_get(window) if bool(m["finite"])]
    if not host:
        return {}
    return {k: float(np.mean([m[k] for m in host])) for k in host[0] if not k.startswith("finite")}

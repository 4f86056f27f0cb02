"""Stopping cleanly on SIGTERM / SIGINT: what TPU and GCE preemption, Slurm (`scancel`, time limits) and Ctrl-C
send. While a stage trains, the signal only raises a flag; the loop finishes the step in flight, saves a
checkpoint at that step and raises `jdistill.errors.Preempted`, whose message gives the exact resume command.

Multi-host: every process must stop after the same step (orbax saves collectively). A signal may reach the hosts
at different times, so the flags are combined across processes (`multihost_utils.process_allgather`) every
`sync_every` steps and at the end of the stage; with one process the local flag is read after every step.

A second signal while the first is being handled restores the previous handler and re-delivers the signal
(a second Ctrl-C quits at once). The previous handlers come back when the stage ends.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading

import jax
import numpy as np

from jdistill.errors import Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MULTIHOST_SYNC_EVERY = 10  # steps between the all-gathers of the stop flag on several processes


class StopRequests:
    """A context manager that turns SIGTERM / SIGINT into a stop request while a stage trains."""

    def __init__(self, sync_every: int | None = None):
        self.signum: int | None = None
        self.sync_every = sync_every or (1 if jax.process_count() == 1 else MULTIHOST_SYNC_EVERY)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self.restore()  # a second signal: the previous behaviour (KeyboardInterrupt, or the default kill)
        os.kill(os.getpid(), signum)

    def agreed(self, step: int, *, last: bool = False) -> int | None:
        """The signal number every process stops for after `step`, or None. Collective on several processes
        (every `sync_every` steps and at `last`): all processes call it with the same steps."""
        if jax.process_count() == 1:
            return self.signum
        if step % self.sync_every and not last:
            return None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
        raised = [int(flag) for flag in np.ravel(flags) if flag]
        return raised[0] if raised else None


def preempted(signum: int, stage: str, step: int, checkpoint, run_dir) -> Preempted:
    """The error a stage raises after saving `checkpoint` (its path) at `step` on signal `signum`."""
    name = signal.Signals(signum).name
    command = f"jdistill train --run-dir {shlex.quote(str(run_dir))} --resume"
    return Preempted(
        f"{name}: {stage} stopped after step {step}, checkpoint saved at {checkpoint}; resume with: {command}",
        signum,
    )

"""Orbax checkpoints of the student's train state (never the teacher's parameters).

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
leaves a half-written checkpoint in place of a good one; `keep` bounds how many are kept.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from jdistill.errors import RunDirError
from jdistill.io import fs
from jdistill.train.checkpoint_digest import manifest_problem, write_manifest


class Checkpointer:
    """Save / restore `TrainState` pytrees under `directory` (one sub-directory per step)."""

    def __init__(self, directory, *, keep: int):
        directory = fs.path(directory)  # a local folder or a gs:// URL (orbax writes both)
        self.directory = directory if fs.is_remote(directory) else directory.absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        try:
            self.manager = ocp.CheckpointManager(fs.checkpoint_location(self.directory), options=options)
        except OSError as exc:
            raise RunDirError(f"{self.directory}: cannot create checkpoint directory ({exc.strerror or exc})") from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_path(self, step: int) -> fs.AnyPath:
        """The folder of `step`'s checkpoint."""
        return self.directory / str(step)

    def save(self, step: int, state, *, force: bool = False, info: dict | None = None) -> None:
        """Save `state` at `step`; `info`: a small JSON dict stored with it (read back by `info`)."""
        saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=force, custom_metadata=info or {})
        self.manager.wait_until_finished()
        if saved and jax.process_index() == 0:  # every process's files are in place once orbax has finished
            write_manifest(self._written(step))

    def _written(self, step: int) -> fs.AnyPath:
        """The folder orbax wrote `step` to (`step_path`, or its local stand-in under the tests' fake gs://)."""
        return fs.checkpoint_location(self.directory) / str(step)

    def damage(self, step: int) -> str | None:
        """None when `step`'s files match the checksums written with them, else what differs (one line)."""
        return manifest_problem(self._written(step))

    def info(self, step: int) -> dict:
        """The `info` dict saved with `step` ({} when absent or unreadable: it is bookkeeping, not state)."""
        try:
            info = self.manager.metadata(step).custom_metadata
        except Exception:  # a damaged metadata file must not stop a resume
            return {}
        return dict(info) if isinstance(info, dict) else {}

    def reload(self) -> None:
        """Re-read the step folders (after one was moved away)."""
        self.manager.reload()

    def restore(self, step: int, like):
        """Restore into the structure, shapes, dtypes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_params(self, step: int, params_like):
        """Only the student parameters of a saved TrainState (any recipe state), into `params_like`'s layout."""
        return self.restore_field(step, "params", params_like)

    def restore_field(self, step: int, field: str, like):
        """Only `field` of a saved TrainState ("params", or "recipe_state" e.g. an EMA), into `like`'s layout."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        restored = self.manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item={field: abstract}, restore_args={field: restore_args}, partial_restore=True
            ),
        )
        return restored[field]

    def close(self) -> None:
        self.manager.close()

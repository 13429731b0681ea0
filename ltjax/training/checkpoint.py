"""Checkpoints of a run with orbax: `workdir/checkpoints/<epoch>/{state, meta}`.

A checkpoint is the whole `TrainState` plus a JSON sidecar (`meta`: epoch, phase, seed and
metrics), written together by one `orbax.checkpoint.CheckpointManager.save`. Orbax writes
into `<epoch>.orbax-checkpoint-tmp-*` and renames the directory when every file is written,
so a write that dies half way leaves only a temporary directory: it is never listed as a
checkpoint (and is removed, synchronously, when the next Checkpointer opens the directory:
orbax's own clean-up runs in a background future that `close` does not wait for, which a
process exiting right after could interrupt), and
`latest_epoch` / `restore` use the last complete one. The step number of a checkpoint is the
number of epochs completed over the whole run.

Mid-epoch checkpoints (`save_partial`, streamed runs): `workdir/checkpoints/partial/<global
optimiser step>/{state, meta}`, the latest one kept; the sidecar adds the epoch in progress,
the steps of it done and their per-step metrics. They sit in their own directory so that
the epoch checkpoints keep their numbering; an epoch checkpoint supersedes them
(`save` removes them once it is written), and `latest_partial` ignores any older than the
latest epoch checkpoint.

Multi-process runs: every process constructs the Checkpointer and calls `save`, `restore`,
`metadata` and `close` at the same points (orbax synchronises the processes and has each
write its part: replicated arrays once, by process 0), in a workdir on a filesystem they
all see. Process 0 alone removes the partial writes, behind a barrier. A checkpoint
restores in any number of processes (one included) into the template's shardings.
"""

from __future__ import annotations

import math
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ltjax.training import sharding

PyTree = Any


def _jsonable(value: Any) -> Any:
  """Plain Python values for the JSON sidecar (arrays become lists; nan stays nan)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  arr = np.asarray(value)
  if arr.ndim:
    return _jsonable(arr.tolist())
  item = arr.item()
  return item if isinstance(item, int) or not math.isfinite(item) else float(item)


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temporary-directory marker


def remove_partial_writes(directory: pathlib.Path) -> None:
  """Removes the temporary directories of checkpoint writes that never finished."""
  if directory.is_dir():
    for path in directory.iterdir():
      if TMP_SUFFIX in path.name and path.is_dir():
        shutil.rmtree(path)


PARTIAL = "partial"  # subdirectory of the mid-epoch checkpoints


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=False,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def _committed_like(restored: PyTree, template: PyTree) -> PyTree:
  """`restored` with every array left uncommitted where its template's array is.

  Orbax places a restored array on its template's device and commits it there; a fresh
  single-device state is uncommitted. `jax.jit` lowers a committed argument with an explicit
  sharding, so a resumed run's programs would differ from the fresh run's (and miss the
  persistent compilation cache: every program compiled again). The uncommitted copy goes
  through the host once per restore.
  """

  def leaf(x: Any, like: Any) -> Any:
    if not isinstance(x, jax.Array) or not isinstance(like, jax.Array) or like.committed:
      return x
    return sharding.uncommitted_copy(x)

  return jax.tree.map(leaf, restored, template)


def _write(manager: ocp.CheckpointManager, step: int, state: PyTree, meta: Any) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


class Checkpointer:
  """Saves every `save_every` epochs, keeps the last `keep`, restores the latest.

  Args:
    workdir: run directory; checkpoints go to `workdir/checkpoints`.
    save_every: save when the number of completed epochs is a multiple of this.
    keep: number of most recent checkpoints kept on disk.
  """

  def __init__(self, workdir: str | pathlib.Path, *, save_every: int = 1, keep: int = 3):
    if save_every < 1:
      raise ValueError(f"save_every must be >= 1, got {save_every}.")
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}.")
    self.save_every = save_every
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if jax.process_index() == 0:
      remove_partial_writes(self.directory)
      remove_partial_writes(self.directory / PARTIAL)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"ltjax Checkpointer {self.directory}")
    self._manager = _manager(self.directory, keep)
    self._partial_manager: ocp.CheckpointManager | None = None

  def save(self, epoch: int, state: PyTree, *, phase: int, seed: int,
           metrics: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves `state` after `epoch` completed epochs when due (or `force`).

    Returns:
      True when a checkpoint was written (False: not due, or one exists for `epoch`).
    """
    due = force or epoch % self.save_every == 0
    if not due or epoch in self._manager.all_steps():
      return False
    meta = _jsonable({"epoch": epoch, "phase": phase, "seed": seed,
                      "metrics": metrics or {}})
    _write(self._manager, epoch, state, meta)
    partial = self._partial(create=False)
    for step in [] if partial is None else partial.all_steps():  # superseded now
      partial.delete(step)
    return True

  def _partial(self, create: bool = True) -> ocp.CheckpointManager | None:
    """The manager of the mid-epoch checkpoints (None if it has none and not `create`)."""
    if self._partial_manager is None and (create or (self.directory / PARTIAL).is_dir()):
      self._partial_manager = _manager(self.directory / PARTIAL, 1)
    return self._partial_manager

  def save_partial(self, global_step: int, state: PyTree, *, epoch: int, epoch_step: int,
                   phase: int, seed: int, metrics: dict[str, Any] | None = None,
                   step_metrics: dict[str, Any] | None = None) -> None:
    """Saves `state` inside epoch `epoch` (0-based, the epochs completed before it) after
    `epoch_step` of its steps, with the per-step metrics of those steps."""
    meta = _jsonable({"epoch": epoch, "epoch_step": epoch_step, "phase": phase,
                      "seed": seed, "metrics": metrics or {},
                      "step_metrics": step_metrics or {}})
    _write(self._partial(), global_step, state, meta)

  def latest_partial(self) -> dict[str, Any] | None:
    """The sidecar of the latest mid-epoch checkpoint newer than every epoch checkpoint
    (with its "global_step"), or None."""
    partial = self._partial(create=False)
    if partial is None:
      return None
    partial.reload()
    step = partial.latest_step()
    if step is None:
      return None
    meta = dict(partial.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    latest = self.latest_epoch()
    if latest is not None and meta["epoch"] < latest:
      return None
    return {**meta, "global_step": step}

  def restore_partial(self, template: PyTree, global_step: int) -> PyTree:
    """The state of the mid-epoch checkpoint `global_step`, in the structure of `template`."""
    restored = self._partial().restore(global_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template)))
    return _committed_like(restored.state, template)

  def latest_epoch(self) -> int | None:
    """Completed epochs of the last complete checkpoint, None when there is none."""
    self._manager.reload()
    return self._manager.latest_step()

  def all_epochs(self) -> list[int]:
    """Epochs of every complete checkpoint on disk, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def metadata(self, epoch: int | None = None) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (default: the latest)."""
    epoch = self._resolve(epoch)
    return dict(self._manager.restore(
        epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore(self, template: PyTree, epoch: int | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores a checkpoint (default: the latest) into the structure of `template`.

    Args:
      template: a state with the saved structure; its arrays give shapes, dtypes and
        shardings of the restored arrays, and whether they are committed to their devices
        (the restored arrays are where the template's are).
      epoch: which checkpoint; None for the latest complete one.

    Returns:
      (state, metadata).
    """
    epoch = self._resolve(epoch)
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return _committed_like(restored.state, template), dict(restored.meta)

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self._manager.close()
    if self._partial_manager is not None:
      self._partial_manager.close()

  def _resolve(self, epoch: int | None) -> int:
    epoch = self.latest_epoch() if epoch is None else epoch
    if epoch is None or epoch not in self._manager.all_steps():
      raise FileNotFoundError(f"no complete checkpoint for epoch {epoch} in "
                              f"{self.directory}.")
    return epoch

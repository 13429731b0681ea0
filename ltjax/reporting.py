"""What a training run leaves in its workdir, written so a crash never leaves half a file.

Layout of a run's workdir (written by `experiments/train.py`):

| file              | content                                                            |
|-------------------|--------------------------------------------------------------------|
| config.json       | the resolved ml_collections config                                 |
| dataset.json      | class counts, seed, source of the (long-tailed) training set       |
| env.json          | ltjax / jax / python versions, devices                             |
| metrics.jsonl     | one JSON object per epoch: `{"epoch": e, "step": s, "train/loss": ...}` |
| events.out.tfevents.* | the same scalars and more for TensorBoard (`RunLogger`)        |
| results.json      | final and best metrics, per-class accuracy, timing                 |
| checkpoints/      | orbax checkpoints (ltjax.training)                                 |
| *.png             | figures from `ltjax.plots`                                         |

JSON files are written atomically (temporary file + `os.replace`) with the permissions a
plain `open(path, "w")` gives (0o666 minus the umask; the umask is read once, at import:
see `_UMASK`). `metrics.jsonl` is truncated on resume: rows of epochs at or after the first
epoch still to run are dropped, so a run killed after its last checkpoint and resumed has
exactly one row per epoch.

Multi-process runs: process 0 alone writes every file above but the checkpoints (which
every process writes its part of, through orbax); the other processes keep the same rows
in memory (`MetricWriter(..., writes=False)`), so they compute the same results.

Step axis. Every TensorBoard summary is logged at the global step, the number of optimiser
steps done so far over the whole run (all phases); `epoch` is a scalar of its own. The row of
0-based epoch e has `"epoch": e` and `"step": (e + 1) * steps_per_epoch` (steps per epoch:
`ltjax.training.loop.steps_per_epoch(N, B, drop_last)`, the same in every phase). Checkpoint
folders (`ltjax.training.checkpoint`) are numbered by completed epochs: checkpoint N holds
the state after the row of epoch N - 1, at step N * steps_per_epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

import numpy as np

METRICS_FILE = "metrics.jsonl"
EPOCH_KEY = "epoch"
STEP_KEY = "step"
PER_CLASS_PREFIX = "eval_per_class"
MAX_PER_CLASS_SCALARS = 100  # more classes: the per-class histogram only
NON_SCALARS = ("per_class", "confusion")  # evaluation entries that are not scalars
HPARAMS_METRICS = ("eval/top1", "eval/many", "eval/medium", "eval/few", "eval/loss")


def to_jsonable(obj: Any) -> Any:
  """Converts numpy / jax values, tuples and ConfigDicts into plain JSON values.

  Non-finite floats become None (strict JSON has no NaN; a class without test samples
  has accuracy NaN).
  """
  if hasattr(obj, "to_dict") and callable(obj.to_dict):
    obj = obj.to_dict()
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (str, bool)) or obj is None:
    return obj
  if hasattr(obj, "__array__") or isinstance(obj, np.generic):
    arr = np.asarray(obj)
    if arr.ndim:
      return [to_jsonable(v) for v in arr.tolist()]
    obj = arr.item()
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, int):
    return obj
  return str(obj)


def _read_umask() -> int:
  """The process umask, by setting it to 0 and straight back (there is no read-only call)."""
  umask = os.umask(0)
  os.umask(umask)
  return umask


# Read once, at import: os.umask cannot be read without being set, and a file that another
# thread creates between the two calls would get no umask at all. Doing it once, while the
# module is imported, keeps that window out of every later write; a process that changes
# its umask after importing ltjax keeps the permissions of the umask it had then.
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def _atomic_file(path: str, prefix: str, sync: bool = False) -> Iterator[TextIO]:
  """Yields a temporary file next to `path` that replaces it once the block succeeds.

  The temporary file gets FILE_MODE (`mkstemp` creates it 0o600) before the replace; on an
  error it is removed and `path` keeps its previous content.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      yield f
      f.flush()
      if sync:
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any, indent: int = 2) -> None:
  """Writes `obj` as JSON atomically: a temporary file in the same folder, then os.replace.

  Readers see either the previous file or the complete new one, never a partial write.
  """
  with _atomic_file(path, f".{os.path.basename(path)}.", sync=True) as f:
    json.dump(to_jsonable(obj), f, indent=indent, sort_keys=False)
    f.write("\n")


def write_text(path: str, text: str) -> None:
  """Writes a text file atomically (as `write_json`)."""
  with _atomic_file(path, f".{os.path.basename(path)}.", sync=True) as f:
    f.write(text)


def read_json(path: str) -> Any:
  """Reads a JSON file."""
  with open(path) as f:
    return json.load(f)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file (a folder is taken to be a workdir); [] when absent.

  A last line cut off by a crash (invalid JSON) is ignored.
  """
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


def metrics_before(path: str, start_epoch: int) -> list[dict[str, Any]]:
  """The rows of metrics.jsonl (`read_metrics`) of epochs before `start_epoch`."""
  return [r for r in read_metrics(path) if r.get(EPOCH_KEY, -1) < start_epoch]


def truncate_metrics(path: str, start_epoch: int) -> list[dict[str, Any]]:
  """Keeps only the rows of epochs before `start_epoch` (atomic rewrite); returns them."""
  kept = metrics_before(path, start_epoch)
  with _atomic_file(path, ".metrics.") as f:
    for row in kept:
      f.write(json.dumps(row) + "\n")
  return kept


class MetricWriter:
  """Scalars per epoch to metrics.jsonl and to TensorBoard event files, at the global step.

  Usage:
    with MetricWriter(workdir, steps_per_epoch=97, start_epoch=completed_epochs) as writer:
      writer.write(epoch, {"train/loss": 1.2, "train/lr": 0.1, "eval/top1": 0.5})

  Args:
    workdir: run folder.
    steps_per_epoch: optimiser steps per epoch; the row of epoch e is logged at step
      (e + 1) * steps_per_epoch (module docstring).
    start_epoch: first epoch this process will log (0 for a fresh run). Existing rows of
      epochs >= start_epoch are dropped, and TensorBoard events after the last kept row's
      step are purged (tensorboardX `purge_step`), so a resumed run never duplicates an epoch.
    tensorboard: also write TensorBoard event files.
    writes: False keeps the rows in memory and writes nothing (no file is opened, none
      truncated): the processes of a multi-process run other than process 0, which log
      the same rows.

  Attributes:
    rows: the rows of the run so far (kept ones, then every written one).
    tensorboard: the tensorboardX `SummaryWriter`, or None; for summaries other than the
      scalars of `write`.
  """

  def __init__(self, workdir: str, *, steps_per_epoch: int, start_epoch: int = 0,
               tensorboard: bool = True, writes: bool = True):
    if steps_per_epoch < 1:
      raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    self.steps_per_epoch = steps_per_epoch
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard = None
    if not writes:
      self.rows, self._file = metrics_before(self.path, start_epoch), None
      return
    os.makedirs(workdir, exist_ok=True)
    self.rows = truncate_metrics(self.path, start_epoch)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      purge = self.step_of(start_epoch - 1) + 1 if start_epoch else None
      # Event files are named by the second they were opened in: the suffix keeps a run
      # resumed within the same second from overwriting the previous file.
      self.tensorboard = SummaryWriter(logdir=workdir, purge_step=purge,
                                       filename_suffix=f".from_epoch{start_epoch}")

  def step_of(self, epoch: int) -> int:
    """The global step after 0-based epoch `epoch`: (epoch + 1) * steps_per_epoch."""
    return (int(epoch) + 1) * self.steps_per_epoch

  def write(self, epoch: int, scalars: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one row `{"epoch": e, "step": s, **scalars}` (flushed) and its TensorBoard
    scalars at step s, `epoch` included.

    Values that are not finite numbers are stored as null and skipped in TensorBoard.
    """
    row = {EPOCH_KEY: int(epoch), STEP_KEY: self.step_of(epoch), **to_jsonable(dict(scalars))}
    if self._file is not None:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    self.rows.append(row)
    if self.tensorboard is not None:
      for name, value in row.items():
        if name != STEP_KEY and _is_number(value):
          self.tensorboard.add_scalar(name, value, row[STEP_KEY])
      self.tensorboard.flush()
    return row

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self.tensorboard is not None:
      self.tensorboard.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """`{"optim": {"lr": 0.1}}` (a mapping or ConfigDict) -> `{"optim.lr": 0.1}`.

  Values are made JSON values first (`to_jsonable`); lists become JSON text.
  """
  flat = {}
  for key, value in to_jsonable(tree).items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = json.dumps(value) if isinstance(value, list) else value
  return flat


def per_class_tag(name: Any) -> str:
  """TensorBoard tag of a class's test accuracy (a "/" in the name would nest a group)."""
  return f"{PER_CLASS_PREFIX}/{str(name).replace('/', '_')}"


class RunLogger:
  """The `on_epoch_end` callback of `fit` that logs a run to metrics.jsonl and TensorBoard.

  Per epoch, at the global step (module docstring): the train metrics (`train/loss`,
  `train/lr`, the recipe's metrics), `epoch`, `time/epoch_s` (host time since the previous
  epoch ended, or since construction: the first one includes compilation), and after an
  evaluation the test scalars (`eval/top1`, `eval/top5`, `eval/many`, `eval/medium`,
  `eval/few`, `eval/loss`) in both; TensorBoard also gets the per-class test accuracy as
  the histogram `eval/per_class_accuracy` and, for K <= MAX_PER_CLASS_SCALARS classes, as
  the scalars `eval_per_class/<class name>`. The flattened config goes to TensorBoard's
  HParams dashboard once per process, with the eval scalars as its metrics.

  Usage (experiments/runner.py):
    with RunLogger(workdir, steps_per_epoch=steps, start_epoch=completed,
                   class_names=ds.class_names, config=config) as logger:
      fit(..., callbacks=[logger])
    logger.rows, logger.epoch_times

  Args:
    workdir: run folder.
    steps_per_epoch: optimiser steps per epoch (`ltjax.training.loop.steps_per_epoch`).
    start_epoch: completed epochs of the checkpoint the run resumes from (0: fresh run).
    class_names: K class names (per-class tags); None names classes by index.
    config: the resolved config (ConfigDict or mapping) for the HParams dashboard, or None.
    tensorboard: also write TensorBoard event files.
    writes: False logs the rows in memory only (`MetricWriter`; the processes of a
      multi-process run other than process 0).
  """

  def __init__(self, workdir: str, *, steps_per_epoch: int, start_epoch: int = 0,
               class_names: Sequence[str] | None = None, config: Any = None,
               tensorboard: bool = True, writes: bool = True):
    self.writer = MetricWriter(workdir, steps_per_epoch=steps_per_epoch,
                               start_epoch=start_epoch, tensorboard=tensorboard,
                               writes=writes)
    self.class_names = None if class_names is None else list(class_names)
    self.epoch_times: list[float] = []
    self._last = time.perf_counter()
    if config is not None and self.writer.tensorboard is not None:
      _write_hparams(self.writer.tensorboard, flatten(config))

  @property
  def rows(self) -> list[dict[str, Any]]:
    """metrics.jsonl rows of the run so far."""
    return self.writer.rows

  def on_epoch_end(self, epoch: int, train: Mapping[str, float],
                   evaluated: Mapping[str, Any] | None) -> dict[str, Any]:
    """Logs epoch `epoch` (0-based); returns its metrics.jsonl row."""
    now = time.perf_counter()
    self.epoch_times.append(now - self._last)
    self._last = now
    scalars = {f"train/{k}": v for k, v in train.items()}
    if evaluated is not None:
      scalars.update({f"eval/{k}": v for k, v in evaluated.items() if k not in NON_SCALARS})
    scalars["time/epoch_s"] = self.epoch_times[-1]
    row = self.writer.write(epoch, scalars)
    if evaluated is not None and self.writer.tensorboard is not None:
      self._per_class(np.asarray(evaluated["per_class"], np.float64), row[STEP_KEY])
    return row

  def _per_class(self, accuracy: np.ndarray, step: int) -> None:
    tb = self.writer.tensorboard
    finite = np.isfinite(accuracy)
    if finite.any():
      tb.add_histogram("eval/per_class_accuracy", accuracy[finite], step)
    if accuracy.size <= MAX_PER_CLASS_SCALARS:
      names = self.class_names or range(accuracy.size)
      for name, value, ok in zip(names, accuracy, finite):
        if ok:
          tb.add_scalar(per_class_tag(name), float(value), step)
    tb.flush()

  def close(self) -> None:
    self.writer.close()

  def __enter__(self) -> "RunLogger":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _write_hparams(tb: Any, hparams: Mapping[str, Any]) -> None:
  """The HParams dashboard's summaries, in the run itself (tensorboardX's `add_hparams`
  writes them into a sub-run of their own, away from the run's scalars)."""
  from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
  for summary in hparams_summary(dict(hparams), dict.fromkeys(HPARAMS_METRICS, 0.0)):
    tb.file_writer.add_summary(summary)
  tb.flush()


def environment_info() -> dict[str, Any]:
  """ltjax, jax, flax, optax versions, python, platform and the visible devices."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  import ltjax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "ltjax": ltjax.__version__,
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _package_version("jaxlib"),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "backend": jax.default_backend(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind if devices else None,
  }


def _package_version(name: str) -> str | None:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def best_row(rows: Iterable[Mapping[str, Any]], key: str = "eval/top1") -> dict[str, Any] | None:
  """The logged row with the highest `key` (first one on ties); None when never logged."""
  best = None
  for row in rows:
    value = row.get(key)
    if isinstance(value, (int, float)) and (best is None or value > best[key]):
      best = dict(row)
  return best


def summarize_run(rows: list[Mapping[str, Any]], final_eval: Mapping[str, Any],
                  class_names: Iterable[str], train_counts: Iterable[int],
                  timing: Mapping[str, Any], extra: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
  """The content of results.json.

  Args:
    rows: metrics.jsonl rows of the whole run.
    final_eval: `ltjax.metrics.evaluate_logits` output on the test set after training
      (top1, top5, many, medium, few, per_class, confusion).
    class_names: K names.
    train_counts: (K,) training counts n_k.
    timing: e.g. {"wall_time_s": ..., "epoch_time_s": ..., "num_epochs": ...}.
    extra: anything else to record (method statistics, ...).

  Returns:
    dict with `final` (scalar metrics), `best` (best logged eval row), `per_class`
    (name, n_train, accuracy), `confusion`, `timing`, and `extra`.
  """
  scalars = {k: v for k, v in final_eval.items() if k not in NON_SCALARS}
  per_class = [
      {"class": str(name), "n_train": int(n), "accuracy": acc}
      for name, n, acc in zip(class_names, train_counts,
                              to_jsonable(final_eval.get("per_class", [])))
  ]
  result = {
      "final": to_jsonable(scalars),
      "best": best_row(rows),
      "per_class": per_class,
      "confusion": to_jsonable(final_eval.get("confusion")),
      "timing": to_jsonable(dict(timing)),
  }
  if extra:
    result["extra"] = to_jsonable(dict(extra))
  return result


def aggregate(values: Iterable[float | None]) -> dict[str, Any]:
  """Mean, sample standard deviation (ddof=1; 0 for one value) and n of the non-null values."""
  vals = np.asarray([v for v in values if v is not None], dtype=np.float64)
  if not vals.size:
    return {"mean": None, "std": None, "n": 0}
  std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
  return {"mean": float(vals.mean()), "std": std, "n": int(vals.size)}


def format_mean_std(stats: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
  """'82.11 ± 0.35' (scaled, e.g. accuracy fraction -> %); '-' when there is no value."""
  if stats.get("mean") is None:
    return "-"
  mean = stats["mean"] * scale
  if stats.get("n", 0) > 1:
    return f"{mean:.{digits}f} ± {stats['std'] * scale:.{digits}f}"
  return f"{mean:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A GitHub markdown table."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"

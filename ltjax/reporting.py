"""What a training run leaves in its workdir, written so a crash never leaves half a file.

Layout of a run's workdir (written by `experiments/train.py`):

| file              | content                                                            |
|-------------------|--------------------------------------------------------------------|
| config.json       | the resolved ml_collections config                                 |
| dataset.json      | class counts, seed, source of the (long-tailed) training set       |
| env.json          | ltjax / jax / python versions, devices                             |
| metrics.jsonl     | one JSON object per logged epoch (`{"epoch": e, "train/loss": ...}`) |
| events.out.tfevents.* | the same scalars for TensorBoard (tensorboardX)                |
| results.json      | final and best metrics, per-class accuracy, timing                 |
| checkpoints/      | orbax checkpoints (ltjax.training)                                 |
| *.png             | figures from `ltjax.plots`                                         |

JSON files are written atomically (temporary file + `os.replace`). `metrics.jsonl` is
truncated on resume: rows of epochs at or after the first epoch still to run are dropped,
so a run killed after its last checkpoint and resumed has exactly one row per epoch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"
EPOCH_KEY = "epoch"


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


def write_json(path: str, obj: Any, indent: int = 2) -> None:
  """Writes `obj` as JSON atomically: a temporary file in the same folder, then os.replace.

  Readers see either the previous file or the complete new one, never a partial write.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(to_jsonable(obj), f, indent=indent, sort_keys=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


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


def truncate_metrics(path: str, start_epoch: int) -> list[dict[str, Any]]:
  """Keeps only the rows of epochs before `start_epoch` (atomic rewrite); returns them."""
  kept = [r for r in read_metrics(path) if r.get(EPOCH_KEY, -1) < start_epoch]
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".metrics.", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    for row in kept:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)
  return kept


class MetricWriter:
  """Scalars per epoch to metrics.jsonl and to TensorBoard event files.

  Usage:
    with MetricWriter(workdir, start_epoch=restored_epoch + 1) as writer:
      writer.write(epoch, {"train/loss": 1.2, "train/lr": 0.1, "eval/top1": 0.5})

  Args:
    workdir: run folder.
    start_epoch: first epoch this process will log (0 for a fresh run). Existing rows of
      epochs >= start_epoch are dropped, and TensorBoard events from that step on are
      purged (tensorboardX `purge_step`), so a resumed run never duplicates an epoch.
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str, start_epoch: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    self.rows = truncate_metrics(self.path, start_epoch)
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir=workdir, purge_step=start_epoch if start_epoch else None)

  def write(self, epoch: int, scalars: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one row `{"epoch": epoch, **scalars}` (flushed) and the TensorBoard scalars.

    Values that are not finite numbers are stored as null and skipped in TensorBoard.
    """
    row = {EPOCH_KEY: int(epoch), **to_jsonable(dict(scalars))}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    self.rows.append(row)
    if self._tb is not None:
      for name, value in row.items():
        if name != EPOCH_KEY and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(name, value, int(epoch))
      self._tb.flush()
    return row

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


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
  scalars = {k: v for k, v in final_eval.items() if k not in ("per_class", "confusion")}
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

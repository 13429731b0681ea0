"""Tests for ltjax.reporting: atomic files and their permissions, metrics.jsonl, TensorBoard."""

from __future__ import annotations

import glob
import json
import os
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from ltjax import reporting
from ltjax.training import evaluation


def test_write_json_is_atomic_and_converts_numpy(tmp_path, monkeypatch):
  path = str(tmp_path / "sub" / "r.json")
  reporting.write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": (1, 2),
                              "nan": float("nan"), "i": np.int64(7)})
  assert reporting.read_json(path) == {"a": 0.5, "b": [0, 1, 2], "c": [1, 2], "nan": None,
                                       "i": 7}
  # A failing write leaves the previous file intact and no temporary file behind.
  def boom(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    reporting.write_json(path, {"a": 1})
  assert reporting.read_json(path)["a"] == 0.5
  assert os.listdir(tmp_path / "sub") == ["r.json"]


def test_metric_writer_truncates_on_resume(tmp_path):
  workdir = str(tmp_path)
  with reporting.MetricWriter(workdir, steps_per_epoch=5) as w:
    for epoch in range(4):
      w.write(epoch, {"train/loss": 1.0 / (epoch + 1), "eval/top1": np.float32(0.1 * epoch)})
  assert [r["epoch"] for r in reporting.read_metrics(workdir)] == [0, 1, 2, 3]
  # Killed after the checkpoint of epoch 1: the resumed process starts at epoch 2.
  with reporting.MetricWriter(workdir, steps_per_epoch=5, start_epoch=2) as w:
    assert [r["epoch"] for r in w.rows] == [0, 1]
    for epoch in range(2, 5):
      w.write(epoch, {"train/loss": 0.0})
  rows = reporting.read_metrics(workdir)
  assert [(r["epoch"], r["step"]) for r in rows] == [(0, 5), (1, 10), (2, 15), (3, 20), (4, 25)]
  assert rows[1]["eval/top1"] == pytest.approx(0.1)
  assert rows[3]["train/loss"] == 0.0
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  # A fresh run (start_epoch=0) in the same folder starts an empty file.
  with reporting.MetricWriter(workdir, steps_per_epoch=1, tensorboard=False) as w:
    w.write(0, {"x": 1})
  assert reporting.read_metrics(workdir) == [{"epoch": 0, "step": 1, "x": 1}]
  with pytest.raises(ValueError, match="steps_per_epoch"):
    reporting.MetricWriter(workdir, steps_per_epoch=0)


def test_read_metrics_ignores_a_cut_off_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"epoch": 0, "x": 1}) + "\n" + '{"epoch": 1, "x"')
  assert reporting.read_metrics(str(path)) == [{"epoch": 0, "x": 1}]
  assert reporting.read_metrics(str(tmp_path / "absent.jsonl")) == []


def _events(workdir):
  """Every event of every event file, in file order (TFRecord: len, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      length = struct.unpack("<Q", data[pos:pos + 8])[0]
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def _tensorboard_scalars(workdir):
  """(tag, step, value) that TensorBoard shows: a SessionLog START at step s (tensorboardX
  `purge_step`) hides the events before it with step >= s."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  out = []
  for event in _events(workdir):
    if event.session_log.status == event_pb2.SessionLog.START:
      out = [v for v in out if v[1] < event.step]
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value
            if v.WhichOneof("value") == "simple_value"]
  return out


def test_tensorboard_scalars_are_at_the_global_step(tmp_path):
  with reporting.MetricWriter(str(tmp_path), steps_per_epoch=3) as w:
    w.write(0, {"train/loss": 2.0, "eval/many": float("nan")})
    w.write(1, {"train/loss": 1.0})
  assert _tensorboard_scalars(str(tmp_path)) == [
      ("epoch", 3, 0.0), ("train/loss", 3, 2.0), ("epoch", 6, 1.0), ("train/loss", 6, 1.0)]


def test_resumed_run_shows_each_epoch_once_in_tensorboard(tmp_path):
  workdir = str(tmp_path)
  with reporting.MetricWriter(workdir, steps_per_epoch=4) as w:
    for epoch in range(4):
      w.write(epoch, {"train/loss": float(epoch)})
  with reporting.MetricWriter(workdir, steps_per_epoch=4, start_epoch=2) as w:
    for epoch in range(2, 5):
      w.write(epoch, {"train/loss": 10.0 + epoch})
  losses = [(step, value) for tag, step, value in _tensorboard_scalars(workdir)
            if tag == "train/loss"]
  assert losses == [(4, 0.0), (8, 1.0), (12, 12.0), (16, 13.0), (20, 14.0)]


def _hparams(workdir):
  """The HParams session-start values written to the run (name -> python value)."""
  from tensorboardX.proto import plugin_hparams_pb2  # noqa: PLC0415
  for event in _events(workdir):
    for value in event.summary.value:
      if value.tag == "_hparams_/session_start_info":
        data = plugin_hparams_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content)
        return {k: getattr(v, v.WhichOneof("kind"))
                for k, v in data.session_start_info.hparams.items()}
  return None


def test_run_logger_rows_tensorboard_and_hparams(tmp_path):
  import ml_collections  # noqa: PLC0415
  config = ml_collections.ConfigDict({"method": "mixup", "optim": {"lr": 0.05},
                                      "schedule": {"milestones": (160, 180)},
                                      "recipe": {"alpha": None}, "progress": False})
  names = ["cat", "dog", "a/b"]
  train = {"loss": 1.5, "lr": 0.05}
  evaluated = {"top1": 0.5, "top5": 1.0, "many": 0.9, "medium": 0.4, "few": float("nan"),
               "loss": 1.25, "per_class": [0.9, float("nan"), 0.1],
               "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}
  with reporting.RunLogger(str(tmp_path), steps_per_epoch=7, class_names=names,
                           config=config) as logger:
    logger.on_epoch_end(0, train, None)
    logger.on_epoch_end(1, train, evaluated)
  rows = reporting.read_metrics(str(tmp_path))
  assert rows == logger.rows and len(logger.epoch_times) == 2
  assert [(r["epoch"], r["step"]) for r in rows] == [(0, 7), (1, 14)]
  assert set(rows[0]) == {"epoch", "step", "train/loss", "train/lr", "time/epoch_s"}
  assert {k: rows[1][k] for k in ("eval/top1", "eval/loss", "eval/few", "train/lr")} == {
      "eval/top1": 0.5, "eval/loss": 1.25, "eval/few": None, "train/lr": 0.05}
  assert "eval/per_class" not in rows[1] and "eval/confusion" not in rows[1]
  scalars = {(tag, step): value for tag, step, value in _tensorboard_scalars(str(tmp_path))}
  assert {step for _, step in scalars} == {7, 14}
  assert scalars[("epoch", 14)] == 1.0 and scalars[("train/lr", 7)] == pytest.approx(0.05)
  assert scalars[("eval/loss", 14)] == 1.25 and scalars[("eval/many", 14)] == pytest.approx(0.9)
  assert scalars[("eval_per_class/cat", 14)] == pytest.approx(0.9)
  assert scalars[("eval_per_class/a_b", 14)] == pytest.approx(0.1)
  assert ("eval_per_class/dog", 14) not in scalars  # no test sample: nan, not logged
  histograms = [(v.tag, e.step, v.histo.num) for e in _events(str(tmp_path))
                for v in e.summary.value if v.WhichOneof("value") == "histo"]
  assert histograms == [("eval/per_class_accuracy", 14, 2.0)]
  assert _hparams(str(tmp_path)) == {"method": "mixup", "optim.lr": 0.05,
                                     "schedule.milestones": "[160, 180]", "progress": False}


def test_run_logger_keeps_only_the_histogram_beyond_100_classes(tmp_path):
  accuracy = np.linspace(0, 1, 101)
  with reporting.RunLogger(str(tmp_path), steps_per_epoch=2) as logger:
    logger.on_epoch_end(0, {"loss": 1.0, "lr": 0.1},
                        {"top1": 0.5, "per_class": accuracy, "confusion": None})
  tags = {tag for tag, _, _ in _tensorboard_scalars(str(tmp_path))}
  assert not any(t.startswith("eval_per_class/") for t in tags) and "eval/top1" in tags
  histograms = [v.histo for e in _events(str(tmp_path)) for v in e.summary.value
                if v.WhichOneof("value") == "histo"]
  assert len(histograms) == 1 and histograms[0].num == 101
  assert histograms[0].sum == pytest.approx(accuracy.sum())


UMASK_SCRIPT = """
import os, sys
os.umask(int(sys.argv[2], 8))
from ltjax import reporting
from ltjax.training import evaluation
folder = sys.argv[1]
with open(os.path.join(folder, "reference.txt"), "w") as f:
  f.write("a plain open()")
reporting.write_json(os.path.join(folder, "config.json"), {"a": 1})
reporting.truncate_metrics(os.path.join(folder, "metrics.jsonl"), 0)
with reporting.MetricWriter(os.path.join(folder, "run"), steps_per_epoch=1,
                            tensorboard=False) as w:
  w.write(0, {"x": 1.0})
"""


@pytest.mark.parametrize("umask", ["022", "077", "002"])
def test_written_files_get_the_permissions_of_a_plain_open(tmp_path, umask):
  subprocess.run([sys.executable, "-c", UMASK_SCRIPT, str(tmp_path), umask], check=True)

  def mode(name):
    return stat.S_IMODE(os.stat(tmp_path / name).st_mode)

  want = mode("reference.txt")
  assert want == 0o666 & ~int(umask, 8)  # the reference itself obeys the umask
  assert mode("config.json") == mode("metrics.jsonl") == mode("run/metrics.jsonl") == want


def test_eval_loss_is_the_mean_test_cross_entropy():
  torch = pytest.importorskip("torch")  # the parity extra
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(37, 5)) * 20).astype(np.float32)  # large: needs a stable form
  labels = rng.integers(0, 5, 37)
  result = evaluation.evaluate(lambda p, s, x: logits, None, None, np.zeros((37, 1)), labels,
                               np.array([50, 40, 30, 20, 10]))
  want = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64),
                                           torch.tensor(labels))
  assert result["loss"] == pytest.approx(float(want), rel=1e-6)  # float32 on the device
  assert result["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_summaries_and_aggregates():
  rows = [{"epoch": 0, "eval/top1": 0.3}, {"epoch": 1, "eval/top1": 0.5},
          {"epoch": 2, "eval/top1": 0.4}]
  assert reporting.best_row(rows) == {"epoch": 1, "eval/top1": 0.5}
  final = {"top1": 0.4, "many": 0.6, "per_class": np.array([0.5, np.nan]),
           "confusion": np.eye(2, dtype=int)}
  res = reporting.summarize_run(rows, final, ["a", "b"], [10, 2], {"wall_time_s": 3.0})
  assert res["final"] == {"top1": 0.4, "many": 0.6}
  assert res["per_class"] == [{"class": "a", "n_train": 10, "accuracy": 0.5},
                              {"class": "b", "n_train": 2, "accuracy": None}]
  assert res["best"]["epoch"] == 1 and res["timing"]["wall_time_s"] == 3.0
  stats = reporting.aggregate([0.8, 0.82, None])
  assert stats["n"] == 2 and stats["mean"] == pytest.approx(0.81)
  assert stats["std"] == pytest.approx(np.std([0.8, 0.82], ddof=1))
  assert reporting.format_mean_std(stats) == "81.00 ± 1.41"
  assert reporting.format_mean_std(reporting.aggregate([0.5])) == "50.00"
  assert reporting.format_mean_std(reporting.aggregate([])) == "-"
  table = reporting.markdown_table(["m", "top1"], [["erm", "1"], ["mixup", "2"]])
  assert table.splitlines()[1] == "|---|---|" and len(table.splitlines()) == 4


def test_environment_info():
  info = reporting.environment_info()
  assert info["device_count"] >= 1 and info["jax"] and info["ltjax"]

"""Tests for ltjax.reporting (workdir writers) and ltjax.plots (PNG figures)."""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np
import pytest

from ltjax import plots
from ltjax import reporting


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
  with reporting.MetricWriter(workdir) as w:
    for epoch in range(4):
      w.write(epoch, {"train/loss": 1.0 / (epoch + 1), "eval/top1": np.float32(0.1 * epoch)})
  assert [r["epoch"] for r in reporting.read_metrics(workdir)] == [0, 1, 2, 3]
  # Killed after the checkpoint of epoch 1: the resumed process starts at epoch 2.
  with reporting.MetricWriter(workdir, start_epoch=2) as w:
    assert [r["epoch"] for r in w.rows] == [0, 1]
    for epoch in range(2, 5):
      w.write(epoch, {"train/loss": 0.0})
  rows = reporting.read_metrics(workdir)
  assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
  assert rows[1]["eval/top1"] == pytest.approx(0.1)
  assert rows[3]["train/loss"] == 0.0
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  # A fresh run (start_epoch=0) in the same folder starts an empty file.
  with reporting.MetricWriter(workdir, tensorboard=False) as w:
    w.write(0, {"x": 1})
  assert reporting.read_metrics(workdir) == [{"epoch": 0, "x": 1}]


def test_read_metrics_ignores_a_cut_off_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"epoch": 0, "x": 1}) + "\n" + '{"epoch": 1, "x"')
  assert reporting.read_metrics(str(path)) == [{"epoch": 0, "x": 1}]
  assert reporting.read_metrics(str(tmp_path / "absent.jsonl")) == []


def _tensorboard_scalars(workdir):
  """(tag, step, value) from every event file (TFRecord framing: len, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      length = struct.unpack("<Q", data[pos:pos + 8])[0]
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


def test_tensorboard_scalars_are_readable(tmp_path):
  with reporting.MetricWriter(str(tmp_path)) as w:
    w.write(0, {"train/loss": 2.0, "eval/many": float("nan")})
    w.write(1, {"train/loss": 1.0})
  assert _tensorboard_scalars(str(tmp_path)) == [("train/loss", 0, 2.0), ("train/loss", 1, 1.0)]


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


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 2000


def test_plots_write_pngs(tmp_path):
  from matplotlib.figure import Figure  # noqa: PLC0415
  counts = np.array([500, 200, 80, 30, 5])
  names = [f"c{i}" for i in range(5)]
  acc = np.array([0.9, 0.8, 0.5, np.nan, 0.1])
  rng = np.random.default_rng(0)
  matrix = rng.integers(0, 20, size=(5, 5))
  gamma = counts / counts.sum()
  figures = {
      "acc.png": lambda p: plots.per_class_accuracy_plot(acc, counts, p, class_names=names),
      "conf.png": lambda p: plots.confusion_plot(matrix, names, p),
      "occ.png": lambda p: plots.occurrence_plot({"IB+IB": gamma, "CB+CB": np.full(5, 0.2)},
                                                 p),
      "temp.png": lambda p: plots.temperature_plot({"paper": np.linspace(1.3, 1, 5),
                                                    "code": np.linspace(2.4, 1, 5)}, counts, p),
      "pairs.png": lambda p: plots.pair_statistics_plot(matrix, p, class_names=names),
  }
  for name, make in figures.items():
    path = str(tmp_path / name)
    fig = make(path)
    assert isinstance(fig, Figure)
    assert _is_png(path), name
  assert isinstance(plots.occurrence_plot(gamma), Figure)  # no path: figure only
  assert not (tmp_path / "none.png").exists()


def test_plots_reject_bad_shapes():
  with pytest.raises(ValueError, match="per_class_acc"):
    plots.per_class_accuracy_plot(np.zeros(3), np.ones(4))
  with pytest.raises(ValueError, match="matrix"):
    plots.confusion_plot(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="series"):
    plots.occurrence_plot({"a": np.ones(3), "b": np.ones(4)})

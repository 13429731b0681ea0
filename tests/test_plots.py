"""Tests for ltjax.plots: PNG figures, titles, and the many / medium / few bands."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

from ltjax import plots

matplotlib.use("Agg")


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


def band_labels(fig):
  """Labels of the shaded bands of the per-class plot (patches of its first Axes)."""
  return [p.get_label() for p in fig.axes[0].patches
          if p.get_label().split(":")[0] in ("many", "medium", "few")]


def legend_texts(fig):
  return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_per_class_plot_shades_the_groups_of_the_training_counts():
  # Unsorted on purpose: n = 101 is many, 100 and 20 are medium, 19 and 3 are few.
  counts = np.array([20, 101, 3, 100, 500, 19])
  fig = plots.per_class_accuracy_plot(np.linspace(0.9, 0.4, 6), counts,
                                      title="mixup on cifar10_lt, seed 2")
  assert fig.axes[0].get_title() == "mixup on cifar10_lt, seed 2"
  assert band_labels(fig) == ["many: 2 classes, n_k 500-101", "medium: 2 classes, n_k 100-20",
                              "few: 2 classes, n_k 19-3"]
  # Bands cover the sorted classes 0-1, 2-3 and 4-5 (x = position, half a bar each side).
  spans = [p.get_extents().transformed(fig.axes[0].transData.inverted()).intervalx
           for p in fig.axes[0].patches if p.get_label() in band_labels(fig)]
  np.testing.assert_allclose(spans, [[-0.5, 1.5], [1.5, 3.5], [3.5, 5.5]], atol=1e-6)
  assert set(band_labels(fig)) <= set(legend_texts(fig))
  assert "test accuracy (mean 65.0%)" in legend_texts(fig)


def test_per_class_plot_says_when_a_group_has_no_class():
  fig = plots.per_class_accuracy_plot(np.full(3, 0.5), np.array([300, 200, 150]))
  assert band_labels(fig) == ["many: 3 classes, n_k 300-150"]
  assert "no medium or few classes" in legend_texts(fig)
  assert fig.axes[0].get_title() == "Per-class accuracy"


def test_titles_name_the_run():
  title = "dbn_mix on cifar100_lt, seed 1"
  matrix = np.eye(3, dtype=int)
  figures = [plots.confusion_plot(matrix, title=title),
             plots.pair_statistics_plot(matrix, title=title),
             plots.occurrence_plot(np.full(3, 1 / 3), title=title),
             plots.temperature_plot(np.ones(3), np.array([30, 20, 10]), title=title)]
  assert [f.axes[0].get_title() for f in figures] == [title] * 4

"""Figures for long-tailed runs (matplotlib, no pyplot state, Agg rendering).

Every function returns a `matplotlib.figure.Figure` and, when `path` is given, saves it
as a PNG there. Figures are built without pyplot, so they work in scripts, tests and
notebooks alike (Jupyter/Colab display a returned Figure inline) and never open windows.

| function                 | shows                                                            |
|--------------------------|------------------------------------------------------------------|
| per_class_accuracy_plot  | test accuracy of each class against its training count n_k, with |
|                          | the many / medium / few bands                                    |
| confusion_plot           | row-normalised confusion matrix (rows true, columns predicted)   |
| occurrence_plot          | label occurrence ratio gamma_k (LOBM, Zhang et al. 2023, eq. 3)  |
| temperature_plot         | DBN-Mix class temperatures T_k (Baik et al. 2024)                |
| pair_statistics_plot     | K x K counts of mixed pairs, foreground x background (OTmix)     |
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from jax.typing import ArrayLike

from ltjax import longtail

GROUP_COLORS = {"many": "tab:green", "medium": "tab:orange", "few": "tab:red"}


def _figure(width: float = 6.4, height: float = 4.2):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), layout="constrained")


def _finish(fig, path: str | None):
  if path is not None:
    fig.savefig(path, format="png", dpi=110)
  return fig


def _class_ticks(ax, names: Sequence[str] | None, num: int, axis: str = "x") -> None:
  """Class-name ticks for up to 30 classes; otherwise plain index ticks."""
  if names is None or num > 30:
    return
  ticks = np.arange(num)
  if axis == "x":
    ax.set_xticks(ticks, [str(n) for n in names], rotation=60, ha="right", fontsize=7)
  else:
    ax.set_yticks(ticks, [str(n) for n in names], fontsize=7)


def per_class_accuracy_plot(per_class_acc: ArrayLike, counts: ArrayLike,
                            path: str | None = None,
                            class_names: Sequence[str] | None = None,
                            title: str | None = None):
  """Per-class test accuracy (points, right axis) over training counts n_k (bars, log).

  Classes are sorted by decreasing n_k, so the long tail reads left to right, and the
  many / medium / few groups of `ltjax.longtail.group_of_classes` (the groups of
  `ltjax.metrics`) are shaded bands, each labelled with its classes' n_k range; a group
  without classes (e.g. no few-shot class) is named in the legend as absent. Classes
  without test samples (NaN accuracy) are left out of the accuracy curve.

  Args:
    per_class_acc: (K,) accuracies in [0, 1].
    counts: (K,) training counts.
    path: PNG path, or None to only return the figure.
    class_names: optional K names (ticks shown for K <= 30).
    title: figure title, e.g. "mixup on cifar10_lt, seed 0" (default: "Per-class
      accuracy"); the legend gives the mean accuracy.
  """
  acc = np.asarray(per_class_acc, np.float64)
  n = np.asarray(counts, np.float64)
  if acc.shape != n.shape or acc.ndim != 1:
    raise ValueError(f"per_class_acc and counts must both be (K,), got {acc.shape} and "
                     f"{n.shape}.")
  order = np.argsort(-n, kind="stable")
  fig = _figure()
  ax = fig.add_subplot()
  x = np.arange(n.size)
  absent = _group_bands(ax, n[order])
  ax.bar(x, n[order], color="0.6", label="training images n_k")
  ax.set_yscale("log")
  ax.set_ylabel("training images (log)")
  ax.set_xlabel("class (sorted by training count)")
  ax.set_xlim(-0.5, n.size - 0.5)
  _class_ticks(ax, None if class_names is None else [class_names[i] for i in order], n.size)
  ax2 = ax.twinx()
  ax2.plot(x, 100 * acc[order], "o-", color="tab:blue", ms=3,
           label=f"test accuracy (mean {100 * np.nanmean(acc):.1f}%)")
  ax2.set_ylim(0, 100)
  ax2.set_ylabel("test accuracy (%)")
  handles, labels = ax.get_legend_handles_labels()
  line_handles, line_labels = ax2.get_legend_handles_labels()
  fig.legend(handles + absent + line_handles,
             labels + [h.get_label() for h in absent] + line_labels, fontsize=7,
             loc="outside lower center", ncols=3)
  ax.set_title(title or "Per-class accuracy")
  return _finish(fig, path)


def _group_bands(ax, sorted_counts: np.ndarray) -> list:
  """Shades the many / medium / few classes of counts sorted in decreasing order.

  Groups follow the counts, so each is one run of neighbouring classes. Returns the legend
  entries not drawn on `ax`: an empty patch naming the groups without classes, if any.
  """
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  groups = longtail.group_of_classes(sorted_counts.astype(np.int64))
  absent = []
  for g, name in enumerate(longtail.GROUP_NAMES):
    members = np.flatnonzero(groups == g)
    if not members.size:
      absent.append(name)
      continue
    high, low = sorted_counts[members[0]], sorted_counts[members[-1]]
    span = f"{high:.0f}" if high == low else f"{high:.0f}-{low:.0f}"
    label = f"{name}: {members.size} class{'es' if members.size > 1 else ''}, n_k {span}"
    ax.axvspan(members[0] - 0.5, members[-1] + 0.5, color=GROUP_COLORS[name], alpha=0.15,
               lw=0, label=label)
  return [Patch(fill=False, lw=0, label=f"no {' or '.join(absent)} classes")] if absent else []


def confusion_plot(matrix: ArrayLike, class_names: Sequence[str] | None = None,
                   path: str | None = None, normalize: bool = True,
                   title: str | None = None):
  """Confusion matrix (rows: true class, columns: predicted), rows normalised to 1.

  Args:
    matrix: (K, K) counts.
    class_names: optional K names (ticks for K <= 30; values annotated for K <= 12).
    path: PNG path or None.
    normalize: divide each row by its sum (empty rows stay 0).
    title: figure title.
  """
  m = np.asarray(matrix, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"matrix must be (K, K), got {m.shape}.")
  if normalize:
    rows = m.sum(axis=1, keepdims=True)
    m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  k = m.shape[0]
  fig = _figure(5.6, 5.0)
  ax = fig.add_subplot()
  image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
  fig.colorbar(image, ax=ax, shrink=0.8)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  _class_ticks(ax, class_names, k, "x")
  _class_ticks(ax, class_names, k, "y")
  if k <= 12:
    for i in range(k):
      for j in range(k):
        ax.text(j, i, f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}", ha="center",
                va="center", fontsize=6, color="white" if m[i, j] > 0.5 * m.max() else "black")
  ax.set_title(title or "Confusion matrix" + (" (row-normalised)" if normalize else ""))
  return _finish(fig, path)


def _series(values: ArrayLike | Mapping[str, ArrayLike], default: str) -> dict[str, np.ndarray]:
  if isinstance(values, Mapping):
    return {str(k): np.asarray(v, np.float64) for k, v in values.items()}
  return {default: np.asarray(values, np.float64)}


def _class_bars(series: dict[str, np.ndarray], ylabel: str,
                class_names: Sequence[str] | None):
  """A figure of side-by-side bars per class around the level 1; returns (fig, ax, K)."""
  sizes = {v.shape for v in series.values()}
  if len(sizes) != 1 or len(next(iter(sizes))) != 1:
    raise ValueError(f"every series must be (K,) with the same K, got {sorted(sizes)}.")
  k = next(iter(sizes))[0]
  fig = _figure()
  ax = fig.add_subplot()
  width = 0.8 / len(series)
  for i, (name, v) in enumerate(series.items()):
    ax.bar(np.arange(k) + (i - (len(series) - 1) / 2) * width, v, width, label=name)
  ax.legend(fontsize=7)
  ax.axhline(1.0, color="k", lw=0.8, ls="--")
  ax.set_xlabel("class")
  ax.set_ylabel(ylabel)
  _class_ticks(ax, class_names, k)
  return fig, ax, k


def occurrence_plot(gamma: ArrayLike | Mapping[str, ArrayLike], path: str | None = None,
                    class_names: Sequence[str] | None = None, title: str | None = None):
  """Label occurrence ratio gamma_k (LOBM, Zhang et al. 2023, eq. 3), times K.

  gamma_k = sum_{i in class k} P_i lam_i / sum_j P_j lam_j over both sides of every mixed
  pair; K * gamma_k = 1 for every class means balanced label occurrence. The legend gives
  each series' imbalance gamma_max / gamma_min (paper, CIFAR-10-LT rho=10: 9.91 mixup,
  3.16 IB+CB, 1.10 CB+CB).

  Args:
    gamma: (K,) ratios summing to 1, or a mapping name -> (K,) to compare samplers.
    path: PNG path or None.
    class_names: optional K names.
    title: figure title.
  """
  series = _series(gamma, "gamma")
  labelled = {}
  for name, g in series.items():
    ratio = g.max() / g.min() if g.size and g.min() > 0 else float("inf")
    labelled[f"{name} (max/min {ratio:.2f})"] = g * g.size
  fig, ax, _ = _class_bars(labelled, "K * gamma_k (1 = balanced)", class_names)
  ax.set_title(title or "Label occurrence ratio")
  return _finish(fig, path)


def temperature_plot(temperatures: ArrayLike | Mapping[str, ArrayLike], counts: ArrayLike,
                     path: str | None = None, class_names: Sequence[str] | None = None,
                     title: str | None = None):
  """DBN-Mix class temperatures T_k (bars) with the training counts n_k (line, log axis).

  T_k = (max_j B_j / B_k) ** (1 / eta), B_k = eps n_k / n_max + 1 - eps (paper) or
  eps K n_k / n_max + 1 - eps (authors' code); see `ltjax.losses.dbn_temperatures`.

  Args:
    temperatures: (K,) or mapping name -> (K,) (e.g. {"paper": ..., "code": ...}).
    counts: (K,) training counts.
    path: PNG path or None.
    class_names: optional K names.
    title: figure title.
  """
  series = _series(temperatures, "T_k")
  fig, ax, k = _class_bars(series, "temperature T_k", class_names)
  ax2 = ax.twinx()
  ax2.plot(np.arange(k), np.asarray(counts, np.float64), "k.-", ms=4, lw=0.8)
  ax2.set_yscale("log")
  ax2.set_ylabel("training images n_k (log)")
  ax.set_title(title or "Class-conditional temperatures")
  return _finish(fig, path)


def pair_statistics_plot(pair_counts: ArrayLike, path: str | None = None,
                         class_names: Sequence[str] | None = None,
                         title: str | None = None):
  """Mixed-pair counts m_ij: foreground class i (rows) pasted on background class j (cols).

  OTmix (Gao et al. 2023), Appendix 7.5, Fig. 9: CMO pastes most foregrounds onto majority
  backgrounds; OTmix picks backgrounds of confusable classes. Rows are normalised to 1
  so rare foreground classes stay visible.

  Args:
    pair_counts: (K, K) counts.
    path: PNG path or None.
    class_names: optional K names.
    title: figure title.
  """
  fig = confusion_plot(pair_counts, class_names, None, normalize=True,
                       title=title or "Mixed pairs (row-normalised)")
  ax = fig.axes[0]
  ax.set_xlabel("background class")
  ax.set_ylabel("foreground class")
  return _finish(fig, path)

"""Dataset containers and the long-tailed training subset (SPEC section 1).

`ArrayDataset` holds a small decoded dataset in host memory (CIFAR, Fashion-MNIST, digits,
the 2D toy); `FileListDataset` holds image paths for the large ones (ImageNet-LT,
Places-LT, iNaturalist 2018) that the grain pipeline decodes on the fly.
`make_longtail` subsamples the training split only; test sets stay balanced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from ltjax import longtail


def _check_split(name: str, items: Any, labels: np.ndarray, num_classes: int) -> None:
  if labels.ndim != 1 or labels.dtype != np.int32:
    raise ValueError(f"{name}_labels must be a 1-D int32 array, got {labels.dtype} "
                     f"with shape {labels.shape}.")
  if len(items) != labels.shape[0]:
    raise ValueError(f"{name} inputs and labels differ in length: {len(items)} vs "
                     f"{labels.shape[0]}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{name}_labels must lie in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}].")


class _LabelledSplits:
  """Class statistics shared by the dataset containers (needs class_names and labels)."""
  class_names: tuple[str, ...]
  train_labels: np.ndarray
  test_labels: np.ndarray

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def train_counts(self) -> np.ndarray:
    return longtail.class_counts(self.train_labels, self.num_classes)

  @property
  def test_counts(self) -> np.ndarray:
    return longtail.class_counts(self.test_labels, self.num_classes)


@dataclasses.dataclass(frozen=True)
class ArrayDataset(_LabelledSplits):
  """A decoded dataset in host memory.

  Attributes:
    train_images: (N, H, W, C) uint8 images; for the feature-valued `toy2d` set, (N, D)
      float32 features (meta["kind"] == "features"); for sound (`esc50_lt`), (N, T) int16
      PCM waveforms, zero right-padded (meta["kind"] == "waveform").
    train_labels: (N,) int32.
    test_images: like train_images (balanced test set).
    test_labels: (M,) int32.
    class_names: K names; the label is the index in this tuple.
    meta: provenance: "source", "kind" ("images"/"features") and, after `make_longtail`,
      "profile", "rho", "mu", "seed", "counts", "original_counts".
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name in ("train", "test"):
      images = getattr(self, f"{name}_images")
      waveforms = images.dtype == np.int16 and images.ndim == 2
      if not waveforms and (images.dtype not in (np.uint8, np.float32)
                            or images.ndim not in (2, 4)):
        raise ValueError(f"{name}_images must be uint8 (N, H, W, C) images, float32 "
                         f"(N, D) features or int16 (N, T) waveforms, got {images.dtype} "
                         f"{images.shape}.")
      _check_split(name, images, getattr(self, f"{name}_labels"), self.num_classes)

  def select_train(self, indices: np.ndarray, **meta: Any) -> ArrayDataset:
    """The dataset with the training split restricted to `indices`, meta updated."""
    return dataclasses.replace(self, train_images=self.train_images[indices],
                               train_labels=self.train_labels[indices],
                               meta={**self.meta, **meta})


@dataclasses.dataclass(frozen=True)
class FileListDataset(_LabelledSplits):
  """A dataset of image files, decoded by the grain pipeline (`ltjax.data.pipeline`).

  Attributes:
    train_paths: N absolute image paths (tuple of str).
    train_labels: (N,) int32.
    test_paths: M absolute image paths.
    test_labels: (M,) int32.
    class_names: K names; the label is the index in this tuple.
    meta: provenance ("source", "root", "split_files", ...).
  """
  train_paths: tuple[str, ...]
  train_labels: np.ndarray
  test_paths: tuple[str, ...]
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name in ("train", "test"):
      _check_split(name, getattr(self, f"{name}_paths"), getattr(self, f"{name}_labels"),
                   self.num_classes)

  def select_train(self, indices: np.ndarray, **meta: Any) -> FileListDataset:
    """The dataset with the training split restricted to `indices`, meta updated."""
    return dataclasses.replace(self, train_paths=tuple(self.train_paths[i] for i in indices),
                               train_labels=self.train_labels[indices],
                               meta={**self.meta, **meta})


Dataset = ArrayDataset | FileListDataset


def make_longtail(ds: Dataset, profile: str = "exp", rho: float = 100.0, seed: int = 0,
                  mu: float = 0.5, n_max: int | None = None) -> Dataset:
  """Long-tailed training subset (Cui et al. 2019 / LDAM protocol, SPEC section 1).

  Counts come from `ltjax.longtail.longtail_counts(profile, n_max, K, rho, mu)`:
  exponential n_i = floor(n_max * rho ** (-i / (K - 1))) or step; class 0 is the head.
  The images kept in class k are the first n_k of a shuffle seeded by (seed, k)
  (`ltjax.longtail.subsample`). The test split is left untouched (balanced).

  Args:
    ds: a dataset whose training split has at least `n_max` images in every class.
    profile: "exp" or "step".
    rho: imbalance ratio n_max / n_min (>= 1).
    seed: subsampling seed (recorded in meta).
    mu: fraction of minority classes for "step".
    n_max: head-class size; default the smallest class of the training split (all
      classes when it is balanced, e.g. 5,000 on CIFAR-10).

  Returns:
    A dataset of the same type whose meta records profile, rho, mu, seed, counts and
    original_counts.

  Raises:
    ValueError: unknown profile, rho < 1, or a class with fewer than n_i images.
  """
  available = ds.train_counts
  n_max = int(available.min()) if n_max is None else n_max
  counts = longtail.longtail_counts(profile, n_max, ds.num_classes, rho, mu)
  kept = longtail.subsample(ds.train_labels, counts, seed)
  return ds.select_train(kept, profile=profile, rho=float(rho), mu=float(mu), seed=int(seed),
                         counts=counts.tolist(), original_counts=available.tolist())

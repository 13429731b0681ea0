"""Datasets that need no files: scikit-learn's 8x8 digits and the CP-Mix 2D toy."""

from __future__ import annotations

import numpy as np

from ltjax.data.dataset import ArrayDataset

DIGITS_TEST_FRACTION = 1.0 / 3.0
TOY2D_MEANS = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
TOY2D_CLASSES = ("major_north", "major_east", "minor_west", "minor_south")
TOY2D_STD = 0.4
TOY2D_PER_CLASS = 1000


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) indices; round(test_fraction * n_k) of each class go to test."""
  train, test = [], []
  for k in np.unique(labels):
    members = np.random.default_rng([seed, int(k)]).permutation(np.flatnonzero(labels == k))
    n_test = int(round(test_fraction * members.size))
    test.append(members[:n_test])
    train.append(members[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits(split_seed: int = 0) -> ArrayDataset:
  """scikit-learn's digits (1,797 8x8 grayscale images, 10 classes), balanced.

  Pixel values 0..16 become uint8 min(16 * v, 255). The split is stratified and fixed:
  a third of each class (rounded) is the test set, chosen by a shuffle seeded by
  (split_seed, class); about 1,198 train / 599 test images.
  """
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  bunch = datasets.load_digits()
  images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
  train, test = _stratified_split(labels, DIGITS_TEST_FRACTION, split_seed)
  return ArrayDataset(images[train], labels[train], images[test], labels[test],
                      tuple(str(d) for d in range(10)),
                      meta={"source": "sklearn.datasets.load_digits", "kind": "images",
                            "split_seed": split_seed})


def _gaussians(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
  labels = np.repeat(np.arange(len(TOY2D_MEANS), dtype=np.int32), per_class)
  points = TOY2D_MEANS[labels] + TOY2D_STD * rng.standard_normal((labels.size, 2))
  return points.astype(np.float32), labels


def toy2d(data_seed: int = 0) -> ArrayDataset:
  """The balanced pool of the CP-Mix 2D toy (Appendix B.1 of the CP-Mix paper).

  Four isotropic Gaussians with standard deviation 0.4: majority classes centred at
  (0, 1) and (1, 0), minority classes at (-1, 0) and (0, -1); each minority class lies
  next to one majority class (meta["similar_pairs"]: 0-2 and 1-3). The pool has 1,000
  training and 1,000 test points per class; `get_dataset("toy2d")` keeps 1,000 / 50
  training points per majority / minority class (step profile, rho=20) as in the paper.
  Images are (N, 2) float32 features (meta["kind"] == "features").
  """
  train_x, train_y = _gaussians(np.random.default_rng([data_seed, 0]), TOY2D_PER_CLASS)
  test_x, test_y = _gaussians(np.random.default_rng([data_seed, 1]), TOY2D_PER_CLASS)
  return ArrayDataset(train_x, train_y, test_x, test_y, TOY2D_CLASSES,
                      meta={"source": "CP-Mix appendix B.1 toy", "kind": "features",
                            "data_seed": data_seed, "similar_pairs": [(0, 2), (1, 3)]})
